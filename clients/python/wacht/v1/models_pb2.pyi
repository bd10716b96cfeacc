from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "routing")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    routing: Routing
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., routing: _Optional[_Union[Routing, _Mapping]] = ...) -> None: ...

class Routing(_message.Message):
    __slots__ = ("languages", "fallback", "min_confidence", "detector")
    class LanguagesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    languages: _containers.ScalarMap[str, str]
    fallback: str
    min_confidence: float
    detector: str
    def __init__(self, languages: _Optional[_Mapping[str, str]] = ..., fallback: _Optional[str] = ..., min_confidence: _Optional[float] = ..., detector: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LabelInfo(_message.Message):
    __slots__ = ("name", "category", "default_threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    category: str
    default_threshold: float
    def __init__(self, name: _Optional[str] = ..., category: _Optional[str] = ..., default_threshold: _Optional[float] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("name", "output", "activation", "labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    output: str
    activation: str
    labels: _containers.RepeatedCompositeFieldContainer[LabelInfo]
    def __init__(self, name: _Optional[str] = ..., output: _Optional[str] = ..., activation: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[LabelInfo, _Mapping]]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_texts_per_request", "max_text_bytes", "max_length", "max_windows_per_text", "max_batch_tokens", "max_batch_size", "max_queue_texts")
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOWS_PER_TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_TEXTS_FIELD_NUMBER: _ClassVar[int]
    max_texts_per_request: int
    max_text_bytes: int
    max_length: int
    max_windows_per_text: int
    max_batch_tokens: int
    max_batch_size: int
    max_queue_texts: int
    def __init__(self, max_texts_per_request: _Optional[int] = ..., max_text_bytes: _Optional[int] = ..., max_length: _Optional[int] = ..., max_windows_per_text: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_queue_texts: _Optional[int] = ...) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "source", "license", "split", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    license: str
    split: str
    size: int
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., license: _Optional[str] = ..., split: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("base_model", "base_model_license", "license", "datasets", "rebuild_command", "created")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_LICENSE_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    REBUILD_COMMAND_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    base_model_license: str
    license: str
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    rebuild_command: str
    created: str
    def __init__(self, base_model: _Optional[str] = ..., base_model_license: _Optional[str] = ..., license: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ..., rebuild_command: _Optional[str] = ..., created: _Optional[str] = ...) -> None: ...

class FileChecksum(_message.Message):
    __slots__ = ("path", "sha256", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "is_default", "tasks", "categories", "limits", "provider", "providers", "provenance", "card", "metrics_json", "files", "precision", "languages")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    is_default: bool
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    categories: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    provider: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    provenance: Provenance
    card: str
    metrics_json: str
    files: _containers.RepeatedCompositeFieldContainer[FileChecksum]
    precision: str
    languages: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., is_default: _Optional[bool] = ..., tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., categories: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., provider: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., card: _Optional[str] = ..., metrics_json: _Optional[str] = ..., files: _Optional[_Iterable[_Union[FileChecksum, _Mapping]]] = ..., precision: _Optional[str] = ..., languages: _Optional[_Iterable[str]] = ...) -> None: ...
