"""Schemathesis hooks for the OpenAPI fuzz test (tests/tests/openapi.rs).

Works around a CPython 3.11 bug: Hypothesis describes lambdas by parsing their source file with
`ast.parse`, which deep inside a recursive strategy can fail with "SystemError: AST constructor
recursion depth mismatch". That only names a strategy for a message, so a failed description
becomes a plain "lambda" instead of breaking the run (the service is never involved).
"""

from hypothesis.internal import lambda_sources

_describe = lambda_sources.lambda_description


def _safe_description(f):
    try:
        return _describe(f)
    except (SystemError, RecursionError):
        return "lambda"


lambda_sources.lambda_description = _safe_description
