from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Truncation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATION_UNSPECIFIED: _ClassVar[Truncation]
    TRUNCATION_SLIDING_WINDOW: _ClassVar[Truncation]
    TRUNCATION_HEAD: _ClassVar[Truncation]
    TRUNCATION_REJECT: _ClassVar[Truncation]
TRUNCATION_UNSPECIFIED: Truncation
TRUNCATION_SLIDING_WINDOW: Truncation
TRUNCATION_HEAD: Truncation
TRUNCATION_REJECT: Truncation

class TextInput(_message.Message):
    __slots__ = ("id", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "category", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    category: str
    score: float
    def __init__(self, label: _Optional[str] = ..., category: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ns", "tokenize_ns", "inference_ns", "explain_ns", "total_ns", "tokens")
    QUEUE_NS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZE_NS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_NS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_NS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    queue_ns: int
    tokenize_ns: int
    inference_ns: int
    explain_ns: int
    total_ns: int
    tokens: int
    def __init__(self, queue_ns: _Optional[int] = ..., tokenize_ns: _Optional[int] = ..., inference_ns: _Optional[int] = ..., explain_ns: _Optional[int] = ..., total_ns: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...
