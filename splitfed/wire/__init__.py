"""Wire format: Enum message types, JSON header + raw tensor frames, validation, compression."""

from splitfed.wire.codec import WIRE_DTYPES, Message, decode, decode_header, encode, error_frames, frames_nbytes
from splitfed.wire.compression import COMPRESSIONS, INTEGERS, compress, decompress, wire_names
from splitfed.wire.messages import PROTOCOL_VERSION, ErrorCode, Header, MsgType, TensorSpec, WireError
from splitfed.wire.payload import bytes_tensor, tensor_bytes

__all__ = [
    "COMPRESSIONS",
    "INTEGERS",
    "PROTOCOL_VERSION",
    "WIRE_DTYPES",
    "ErrorCode",
    "Header",
    "Message",
    "MsgType",
    "TensorSpec",
    "WireError",
    "bytes_tensor",
    "compress",
    "decode",
    "decode_header",
    "decompress",
    "encode",
    "error_frames",
    "frames_nbytes",
    "tensor_bytes",
    "wire_names",
]
