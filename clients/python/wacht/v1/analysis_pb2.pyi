from wacht.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnalyzeRequest(_message.Message):
    __slots__ = ("texts", "model", "tasks", "truncation", "language")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedCompositeFieldContainer[_common_pb2.TextInput]
    model: str
    tasks: _containers.RepeatedScalarFieldContainer[str]
    truncation: _common_pb2.Truncation
    language: str
    def __init__(self, texts: _Optional[_Iterable[_Union[_common_pb2.TextInput, _Mapping]]] = ..., model: _Optional[str] = ..., tasks: _Optional[_Iterable[str]] = ..., truncation: _Optional[_Union[_common_pb2.Truncation, str]] = ..., language: _Optional[str] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task", "activation", "scores", "predicted")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    task: str
    activation: str
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    predicted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task: _Optional[str] = ..., activation: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ..., predicted: _Optional[_Iterable[str]] = ...) -> None: ...

class AnalysisResult(_message.Message):
    __slots__ = ("id", "tasks", "tokens", "windows", "model", "language", "language_confidence")
    ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskResult]
    tokens: int
    windows: int
    model: _common_pb2.ModelRef
    language: str
    language_confidence: float
    def __init__(self, id: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., tokens: _Optional[int] = ..., windows: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., language: _Optional[str] = ..., language_confidence: _Optional[float] = ...) -> None: ...

class AnalyzeResponse(_message.Message):
    __slots__ = ("results", "timings", "model", "request_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AnalysisResult]
    timings: _common_pb2.Timings
    model: _common_pb2.ModelRef
    request_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[AnalysisResult, _Mapping]]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...
