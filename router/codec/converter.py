"""The DataConverter every Meridian client and worker of a region uses."""

from __future__ import annotations

import dataclasses

from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from router.codec.aead import RegionCodec


def data_converter(codec: RegionCodec) -> DataConverter:
    """Payloads through ``codec``; failure messages and stack traces too (they often
    quote the data that caused them), via the encoded-attributes failure converter."""
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
