from google.rpc import status_pb2 as _status_pb2
from wacht.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_REVIEW: _ClassVar[Decision]
    DECISION_BLOCK: _ClassVar[Decision]

class AnalysisKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANALYSIS_UNSPECIFIED: _ClassVar[AnalysisKind]
    ANALYSIS_TOXICITY: _ClassVar[AnalysisKind]
    ANALYSIS_SENTIMENT: _ClassVar[AnalysisKind]

class ExplanationLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPLANATION_LEVEL_UNSPECIFIED: _ClassVar[ExplanationLevel]
    EXPLANATION_LEVEL_NONE: _ClassVar[ExplanationLevel]
    EXPLANATION_LEVEL_EVIDENCE: _ClassVar[ExplanationLevel]
    EXPLANATION_LEVEL_GENERATIVE: _ClassVar[ExplanationLevel]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_REVIEW: Decision
DECISION_BLOCK: Decision
ANALYSIS_UNSPECIFIED: AnalysisKind
ANALYSIS_TOXICITY: AnalysisKind
ANALYSIS_SENTIMENT: AnalysisKind
EXPLANATION_LEVEL_UNSPECIFIED: ExplanationLevel
EXPLANATION_LEVEL_NONE: ExplanationLevel
EXPLANATION_LEVEL_EVIDENCE: ExplanationLevel
EXPLANATION_LEVEL_GENERATIVE: ExplanationLevel

class ThresholdOverride(_message.Message):
    __slots__ = ("review", "block", "enabled")
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    review: float
    block: float
    enabled: bool
    def __init__(self, review: _Optional[float] = ..., block: _Optional[float] = ..., enabled: _Optional[bool] = ...) -> None: ...

class ModerateRequest(_message.Message):
    __slots__ = ("texts", "model", "analyses", "categories", "policy", "threshold_overrides", "explanation", "evidence_spans", "suggest_rewrite", "raw_scores", "truncation", "language")
    class ThresholdOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ThresholdOverride
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ThresholdOverride, _Mapping]] = ...) -> None: ...
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ANALYSES_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_SPANS_FIELD_NUMBER: _ClassVar[int]
    SUGGEST_REWRITE_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedCompositeFieldContainer[_common_pb2.TextInput]
    model: str
    analyses: _containers.RepeatedScalarFieldContainer[AnalysisKind]
    categories: _containers.RepeatedScalarFieldContainer[str]
    policy: str
    threshold_overrides: _containers.MessageMap[str, ThresholdOverride]
    explanation: ExplanationLevel
    evidence_spans: bool
    suggest_rewrite: bool
    raw_scores: bool
    truncation: _common_pb2.Truncation
    language: str
    def __init__(self, texts: _Optional[_Iterable[_Union[_common_pb2.TextInput, _Mapping]]] = ..., model: _Optional[str] = ..., analyses: _Optional[_Iterable[_Union[AnalysisKind, str]]] = ..., categories: _Optional[_Iterable[str]] = ..., policy: _Optional[str] = ..., threshold_overrides: _Optional[_Mapping[str, ThresholdOverride]] = ..., explanation: _Optional[_Union[ExplanationLevel, str]] = ..., evidence_spans: _Optional[bool] = ..., suggest_rewrite: _Optional[bool] = ..., raw_scores: _Optional[bool] = ..., truncation: _Optional[_Union[_common_pb2.Truncation, str]] = ..., language: _Optional[str] = ...) -> None: ...

class CategoryScore(_message.Message):
    __slots__ = ("category", "score", "review_threshold", "block_threshold", "action", "flagged")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BLOCK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    category: str
    score: float
    review_threshold: float
    block_threshold: float
    action: Decision
    flagged: bool
    def __init__(self, category: _Optional[str] = ..., score: _Optional[float] = ..., review_threshold: _Optional[float] = ..., block_threshold: _Optional[float] = ..., action: _Optional[_Union[Decision, str]] = ..., flagged: _Optional[bool] = ...) -> None: ...

class Sentiment(_message.Message):
    __slots__ = ("label", "scores")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    label: str
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    def __init__(self, label: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ...) -> None: ...

class EvidenceSpan(_message.Message):
    __slots__ = ("category", "begin", "end", "byte_begin", "byte_end", "score", "text")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    BYTE_BEGIN_FIELD_NUMBER: _ClassVar[int]
    BYTE_END_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    category: str
    begin: int
    end: int
    byte_begin: int
    byte_end: int
    score: float
    text: str
    def __init__(self, category: _Optional[str] = ..., begin: _Optional[int] = ..., end: _Optional[int] = ..., byte_begin: _Optional[int] = ..., byte_end: _Optional[int] = ..., score: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("category", "score", "threshold", "action", "spans")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    category: str
    score: float
    threshold: float
    action: Decision
    spans: _containers.RepeatedCompositeFieldContainer[EvidenceSpan]
    def __init__(self, category: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., action: _Optional[_Union[Decision, str]] = ..., spans: _Optional[_Iterable[_Union[EvidenceSpan, _Mapping]]] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("level", "text", "reasons", "fallback", "fallback_reason", "suggested_rewrite", "generator", "language")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_REWRITE_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    level: ExplanationLevel
    text: str
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    fallback: bool
    fallback_reason: str
    suggested_rewrite: str
    generator: str
    language: str
    def __init__(self, level: _Optional[_Union[ExplanationLevel, str]] = ..., text: _Optional[str] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., fallback: _Optional[bool] = ..., fallback_reason: _Optional[str] = ..., suggested_rewrite: _Optional[str] = ..., generator: _Optional[str] = ..., language: _Optional[str] = ...) -> None: ...

class ModerationResult(_message.Message):
    __slots__ = ("id", "decision", "flagged", "categories", "sentiment", "spans", "explanation", "raw_scores", "model", "tokens", "windows", "language", "language_confidence")
    ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    SENTIMENT_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    decision: Decision
    flagged: bool
    categories: _containers.RepeatedCompositeFieldContainer[CategoryScore]
    sentiment: Sentiment
    spans: _containers.RepeatedCompositeFieldContainer[EvidenceSpan]
    explanation: Explanation
    raw_scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    model: _common_pb2.ModelRef
    tokens: int
    windows: int
    language: str
    language_confidence: float
    def __init__(self, id: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., flagged: _Optional[bool] = ..., categories: _Optional[_Iterable[_Union[CategoryScore, _Mapping]]] = ..., sentiment: _Optional[_Union[Sentiment, _Mapping]] = ..., spans: _Optional[_Iterable[_Union[EvidenceSpan, _Mapping]]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., raw_scores: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., tokens: _Optional[int] = ..., windows: _Optional[int] = ..., language: _Optional[str] = ..., language_confidence: _Optional[float] = ...) -> None: ...

class ModerateResponse(_message.Message):
    __slots__ = ("results", "timings", "model", "policy", "request_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ModerationResult]
    timings: _common_pb2.Timings
    model: _common_pb2.ModelRef
    policy: str
    request_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[ModerationResult, _Mapping]]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., policy: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ModerateStreamRequest(_message.Message):
    __slots__ = ("message_id", "request")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    request: ModerateRequest
    def __init__(self, message_id: _Optional[str] = ..., request: _Optional[_Union[ModerateRequest, _Mapping]] = ...) -> None: ...

class ModerateStreamResponse(_message.Message):
    __slots__ = ("message_id", "sequence", "response", "error")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    sequence: int
    response: ModerateResponse
    error: _status_pb2.Status
    def __init__(self, message_id: _Optional[str] = ..., sequence: _Optional[int] = ..., response: _Optional[_Union[ModerateResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("text", "model", "policy", "threshold_overrides", "suggest_rewrite", "language")
    class ThresholdOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ThresholdOverride
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ThresholdOverride, _Mapping]] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    SUGGEST_REWRITE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    text: _common_pb2.TextInput
    model: str
    policy: str
    threshold_overrides: _containers.MessageMap[str, ThresholdOverride]
    suggest_rewrite: bool
    language: str
    def __init__(self, text: _Optional[_Union[_common_pb2.TextInput, _Mapping]] = ..., model: _Optional[str] = ..., policy: _Optional[str] = ..., threshold_overrides: _Optional[_Mapping[str, ThresholdOverride]] = ..., suggest_rewrite: _Optional[bool] = ..., language: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("moderation", "text_delta", "final")
    MODERATION_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    moderation: ModerationResult
    text_delta: str
    final: Explanation
    def __init__(self, moderation: _Optional[_Union[ModerationResult, _Mapping]] = ..., text_delta: _Optional[str] = ..., final: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CategoryThresholds(_message.Message):
    __slots__ = ("category", "enabled", "review", "block")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    category: str
    enabled: bool
    review: float
    block: float
    def __init__(self, category: _Optional[str] = ..., enabled: _Optional[bool] = ..., review: _Optional[float] = ..., block: _Optional[float] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "description", "is_default", "categories", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    is_default: bool
    categories: _containers.RepeatedCompositeFieldContainer[CategoryThresholds]
    source: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., is_default: _Optional[bool] = ..., categories: _Optional[_Iterable[_Union[CategoryThresholds, _Mapping]]] = ..., source: _Optional[str] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...

class ListCategoriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Category(_message.Message):
    __slots__ = ("name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ListCategoriesResponse(_message.Message):
    __slots__ = ("categories",)
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[Category]
    def __init__(self, categories: _Optional[_Iterable[_Union[Category, _Mapping]]] = ...) -> None: ...
