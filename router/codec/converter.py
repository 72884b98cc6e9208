"""The DataConverter every Meridian client and worker of a region uses."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any, ClassVar

from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadConverter,
)

from router.codec.aead import RegionCodec
from router.errors import CodecError

# A failure message sealed with the region's key: the prefix, then base64 of the
# encrypted payload of the message.
SEALED_PREFIX = "meridian-sealed:"


class _SealingFailureConverter(DefaultFailureConverterWithEncodedAttributes):
    """Moves a failure's message and stack trace into its encoded attributes (which the
    payload codec encrypts), as the SDK's converter does, and also seals the message
    itself instead of leaving "Encoded failure" there.

    Why: where Temporal hands back only a failure's *message* (a failed query reaches
    the client as a plain error string, without the encoded attributes), the caller
    would otherwise learn nothing but "Encoded failure". Sealed, the message stays
    encrypted at rest and on the wire, and the router opens it with the same region's
    keys (``open_sealed``). Decoders that read the encoded attributes (the SDK, the
    codec server) replace the message anyway.
    """

    codec: ClassVar[RegionCodec]

    def to_failure(
        self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure
    ) -> None:
        super().to_failure(exception, payload_converter, failure)
        if not failure.HasField("encoded_attributes"):
            return
        attributes = payload_converter.from_payloads([failure.encoded_attributes])[0]
        message = attributes.get("message", "") if isinstance(attributes, dict) else ""
        sealed = self.codec.encode_one(payload_converter.to_payloads([message])[0])
        failure.message = SEALED_PREFIX + base64.b64encode(sealed.SerializeToString()).decode()


def data_converter(codec: RegionCodec) -> DataConverter:
    """Payloads through ``codec``; failure messages and stack traces too (they often
    quote the data that caused them), via the encoded-attributes failure converter."""
    sealing = type("RegionFailureConverter", (_SealingFailureConverter,), {"codec": codec})
    return dataclasses.replace(
        DataConverter.default, payload_codec=codec, failure_converter_class=sealing
    )


def open_sealed(message: str, converter: DataConverter) -> str | None:
    """The plain text of a message sealed by a region's failure converter, opened with
    ``converter``'s codec (that region's keys); None when ``message`` is not sealed.
    A message sealed for another region raises ``CodecError``."""
    if not message.startswith(SEALED_PREFIX):
        return None
    codec = converter.payload_codec
    if not isinstance(codec, RegionCodec):
        raise CodecError("a sealed failure message, but no region codec to open it")
    try:
        payload = Payload.FromString(base64.b64decode(message[len(SEALED_PREFIX) :]))
    except (binascii.Error, ValueError) as exc:
        raise CodecError("a sealed failure message that is not a serialized payload") from exc
    opened: Any = converter.payload_converter.from_payloads([codec.decode_one(payload)])[0]
    return opened if isinstance(opened, str) else str(opened)
