"""A Google API discovery document for the commentanalyzer v1alpha1 surface Wacht serves,
so that `googleapiclient.discovery.build("commentanalyzer", "v1alpha1",
discoveryServiceUrl=WACHT + "/$discovery/rest?version=v1alpha1", developerKey=...)` builds a
client whose `comments().analyze(body=...)` calls this server (`rootUrl` is the URL the
document was fetched from). Only `comments.analyze` is described: Wacht has no
`suggestscore` (it does not take training feedback)."""

from __future__ import annotations

from typing import Any


def _obj(description: str, properties: dict[str, Any], id_: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "description": description,
                              "properties": properties}
    if id_:
        schema["id"] = id_
    return schema


def _str(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _ref(name: str, description: str = "") -> dict[str, Any]:
    return {"$ref": name, "description": description}


SCHEMAS: dict[str, Any] = {
    "AnalyzeCommentRequest": _obj("A comment to score and the attributes to score.", {
        "comment": _ref("TextEntry", "The comment to score."),
        "context": _ref("Context", "Accepted and not used."),
        "requestedAttributes": {
            "type": "object",
            "description": "Attribute name (TOXICITY, INSULT, ...) -> options.",
            "additionalProperties": {"$ref": "AttributeParameters"},
        },
        "languages": {"type": "array", "items": {"type": "string"},
                      "description": "ISO 639-1 codes; empty = detected."},
        "doNotStore": {"type": "boolean", "description": "Accepted; Wacht never stores."},
        "clientToken": _str("Echoed in the response."),
        "sessionId": _str("Accepted and not used."),
        "communityId": _str("Accepted and not used."),
        "spanAnnotations": {"type": "boolean",
                            "description": "Score each sentence as well (spanScores)."},
    }, "AnalyzeCommentRequest"),
    "AnalyzeCommentResponse": _obj("Scores of the requested attributes.", {
        "attributeScores": {"type": "object",
                            "additionalProperties": {"$ref": "AttributeScores"}},
        "languages": {"type": "array", "items": {"type": "string"}},
        "detectedLanguages": {"type": "array", "items": {"type": "string"}},
        "clientToken": _str("The request's clientToken."),
    }, "AnalyzeCommentResponse"),
    "TextEntry": _obj("A text.", {
        "text": _str("UTF-8 text."),
        "type": {"type": "string", "enum": ["TEXT_TYPE_UNSPECIFIED", "PLAIN_TEXT", "HTML"],
                 "enumDescriptions": ["", "", "Not supported"]},
    }, "TextEntry"),
    "Context": _obj("Context of the comment (not used).", {
        "entries": {"type": "array", "items": {"$ref": "TextEntry"}},
    }, "Context"),
    "AttributeParameters": _obj("Options of one requested attribute.", {
        "scoreType": {"type": "string", "enum": ["SCORE_TYPE_UNSPECIFIED", "PROBABILITY"],
                      "enumDescriptions": ["", ""]},
        "scoreThreshold": {"type": "number", "format": "float",
                           "description": "Scores below are not returned."},
    }, "AttributeParameters"),
    "AttributeScores": _obj("Scores of one attribute.", {
        "summaryScore": _ref("Score"),
        "spanScores": {"type": "array", "items": {"$ref": "SpanScore"}},
    }, "AttributeScores"),
    "SpanScore": _obj("A score of a span: [begin, end) in UTF-16 code units.", {
        "begin": {"type": "integer", "format": "int32"},
        "end": {"type": "integer", "format": "int32"},
        "score": _ref("Score"),
    }, "SpanScore"),
    "Score": _obj("A score.", {
        "value": {"type": "number", "format": "float"},
        "type": {"type": "string", "enum": ["SCORE_TYPE_UNSPECIFIED", "PROBABILITY"],
                 "enumDescriptions": ["", ""]},
    }, "Score"),
}

QUERY_PARAMETERS: dict[str, Any] = {
    name: {"type": "string", "location": "query", "description": description}
    for name, description in {
        "key": "API key.",
        "alt": "Data format for response (json).",
        "fields": "Accepted and ignored.",
        "prettyPrint": "Accepted and ignored.",
        "quotaUser": "Accepted and ignored.",
        "$.xgafv": "V1 error format.",
    }.items()
}


def document(root_url: str) -> dict[str, Any]:
    return {
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": "commentanalyzer:v1alpha1",
        "name": "commentanalyzer",
        "version": "v1alpha1",
        "title": "Perspective Comment Analyzer API (served by Wacht)",
        "description": "Perspective-compatible comment scoring on Wacht's self-hosted models.",
        "protocol": "rest",
        "rootUrl": root_url,
        "servicePath": "",
        "baseUrl": root_url,
        "batchPath": "batch",
        "parameters": QUERY_PARAMETERS,
        "schemas": SCHEMAS,
        "resources": {
            "comments": {
                "methods": {
                    "analyze": {
                        "id": "commentanalyzer.comments.analyze",
                        "path": "v1alpha1/comments:analyze",
                        "flatPath": "v1alpha1/comments:analyze",
                        "httpMethod": "POST",
                        "description": "Scores a comment on the requested attributes.",
                        "parameters": {},
                        "parameterOrder": [],
                        "request": {"$ref": "AnalyzeCommentRequest"},
                        "response": {"$ref": "AnalyzeCommentResponse"},
                    }
                }
            }
        },
    }
