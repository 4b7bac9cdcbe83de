"""The OpenAPI document: every answer an operation can give, in shapes a generated client can parse.

- `error_responses(...)` documents an operation's error answers, all with the one ErrorBody
  component. Litestar's own 400 schema types `extra` as a bare list of types that
  openapi-python-client cannot parse (it then drops every error response), so every operation
  that takes input names its 400 here, which replaces Litestar's.
- Swagger UI at /docs loads its scripts and styles from the service itself (/docs/assets), so
  it works with no internet.
- `DocumentedSchemaPlugin` gives each enum a named component listing its member names
  (`x-enum-varnames`: `Timeframe.MINUTE_1` rather than `VALUE_1`), documents a plain str declared
  as `Annotated[str, SomeEnum]` as that enum, and a field declared `Annotated[T, DocumentedAs(U)]`
  as U (for types msgspec can encode but not describe, such as a union of two Structs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from litestar import Router
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, Reference, Schema, Tag
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from service.api.schemas import ErrorBody
from service.api.static_files import SWAGGER_UI_DIR, packaged_files_router

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

__all__ = [
    "DOCS_ASSETS_PATH",
    "ERROR_DESCRIPTIONS",
    "TAGS",
    "DocumentedAs",
    "DocumentedSchemaPlugin",
    "docs_assets_router",
    "error_responses",
    "openapi_config",
]

#: Where Swagger UI's files are served (under /docs: public, like the page itself).
DOCS_ASSETS_PATH = "/docs/assets"

#: What each error status means in this service; an operation may say more for its own case.
ERROR_DESCRIPTIONS: Mapping[int, str] = {
    400: "The request is malformed: a parameter or a body field is missing, of the wrong type, out of its bounds, "
    "or holds a character PostgreSQL refuses (NUL); `detail` and `extra.errors` name the field",
    401: "The bearer token is missing where one is needed, or malformed, expired, signed with another key, or its "
    "account is disabled (a token that is sent is always checked); `WWW-Authenticate: Bearer`",
    403: "The token is valid, but its user is not an admin",
    404: "Nothing has that id",
    409: "The request conflicts with the current state; `detail` says with what",
    413: "The body is larger than MAX_BODY_BYTES",
    415: "The body is not sent as application/json",
    422: "The request is well-formed but names something unknown or breaks a rule (an unknown symbol, timeframe, "
    "exchange or status; an interval below MIN_INTERVAL_MINUTES); `extra` lists what is allowed",
    429: "Too many failed logins; try again after `Retry-After` seconds",
    500: "Something failed inside the service; `extra.request_id` finds the log line with the details",
    503: "The database is not answering; try again after `Retry-After` seconds",
}

#: The operation groups, in the order Swagger UI shows them (a generated client has one module each).
TAGS = [
    Tag(name="data-collector", description="Start collections, watch and cancel tasks, status and latest prices"),
    Tag(name="klines", description="Stored candles"),
    Tag(name="exchanges", description="The venues collected from: timeframes, page caps, limits, symbols"),
    Tag(name="admin", description="Collection configs, execution logs and statistics (admin token)"),
    Tag(name="auth", description="Log in for a bearer token; who the token belongs to"),
    Tag(name="health", description="Liveness and database reachability"),
]


def error_responses(*codes: int, descriptions: Mapping[int, str] | None = None) -> dict[int, ResponseSpec]:
    """The error answers `codes`, plus 500 and 503 (any operation can fail, every one uses the database).

    `descriptions` replaces the generic description of some codes with the operation's own case.
    """
    described = {**ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {
        code: ResponseSpec(ErrorBody, description=described[code], generate_examples=False)
        for code in sorted({*codes, 500, 503})
    }


@dataclasses.dataclass
class _EnumSchema(Schema):
    """An enum's schema with the names of its members, which openapi-python-client uses for its own enum."""

    enum_varnames: list[str] | None = dataclasses.field(default=None, metadata={"alias": "x-enum-varnames"})


class DocumentedAs:
    """Annotated metadata: the document shows the field as `annotation` instead of its own type.

    For a value msgspec encodes but cannot describe: a union of two Structs without a tag field
    (adding one would change the JSON) is held as `Any` and documented as the union.
    """

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation


def _documented_enum(field_definition: FieldDefinition) -> type[Enum] | None:
    """The enum a field is documented as: its own type, or an enum in its Annotated metadata."""
    if field_definition.is_enum:
        enum_type: type[Enum] = field_definition.annotation
        return enum_type
    return next(
        (m for m in field_definition.metadata if isinstance(m, type) and issubclass(m, Enum)),
        None,
    )


def _documented_as(field_definition: FieldDefinition) -> DocumentedAs | None:
    return next((m for m in field_definition.metadata if isinstance(m, DocumentedAs)), None)


class DocumentedSchemaPlugin(OpenAPISchemaPlugin):
    """Enums as named components with `x-enum-varnames`; `Annotated[str, SomeEnum]` shown as SomeEnum;
    `Annotated[T, DocumentedAs(U)]` shown as U."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return _documented_as(field_definition) is not None or _documented_enum(field_definition) is not None

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        if (documented := _documented_as(field_definition)) is not None:
            shown = schema_creator.for_field_definition(FieldDefinition.from_annotation(documented.annotation))
            return cast("Schema", shown)  # a Reference when U is a component: Litestar takes either
        enum_type = _documented_enum(field_definition)
        assert enum_type is not None
        # The component is built from the bare enum, so that a parameter's description or
        # default never ends up in the shared component.
        reference = schema_creator.for_enum_field(FieldDefinition.from_annotation(enum_type))
        assert isinstance(reference, Reference)
        registered = schema_creator.schema_registry.from_reference(reference)
        if not isinstance(registered.schema, _EnumSchema):
            fields = {f.name: getattr(registered.schema, f.name) for f in dataclasses.fields(Schema)}
            registered.schema = _EnumSchema(**fields, enum_varnames=[member.name for member in enum_type])
        # Litestar takes a Reference from a plugin as it takes a Schema (it returns registered ones itself).
        return cast("Schema", reference)


def openapi_config(*, version: str, components: Sequence[Components]) -> OpenAPIConfig:
    """The document (/docs/openapi.json) and Swagger UI (/docs), with the given extra components."""
    swagger_ui = SwaggerRenderPlugin(
        path="/",
        js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS_PATH}/favicon-32x32.png'>",
    )
    return OpenAPIConfig(
        title="kline-collector",
        version=version,
        description="Keeps exchange candles flowing into PostgreSQL. Every error answer is an `ErrorBody`.",
        path="/docs",
        tags=TAGS,
        render_plugins=[swagger_ui],
        components=list(components),
    )


def docs_assets_router() -> Router:
    """Swagger UI's scripts, styles and icon, from the package (read once, served from memory)."""
    return packaged_files_router(DOCS_ASSETS_PATH, SWAGGER_UI_DIR)
