"""The hamlet.v1 contract as Python: protobuf messages and gRPC stubs generated from ``proto/hamlet/v1``.

    from hamlet_client.proto import inference_service_pb2 as pb, inference_service_pb2_grpc as pb_grpc

The modules are generated at install (``pip install ./client``) or by ``make proto`` into the private
``hamlet_client._generated`` package and never edited by hand; import them from here, the public name.
"""

from hamlet_client._generated.hamlet.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_pb2,
    tensor_pb2,
)

__all__ = ["inference_service_pb2", "inference_service_pb2_grpc", "model_pb2", "tensor_pb2"]
