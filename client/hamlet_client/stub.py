"""The `hamlet.v1.InferenceService` methods bound to a channel, typed (the generated ``_pb2_grpc`` stub is
not). Works with a `grpc.Channel` and a `grpc.aio.Channel` alike."""

from __future__ import annotations

from typing import Any

from hamlet_client.proto import inference_service_pb2 as service_pb2

__all__ = ["SERVICE_NAME", "InferenceStub"]

SERVICE_NAME = "hamlet.v1.InferenceService"


class InferenceStub:
    """The RPCs of `hamlet.v1.InferenceService` as gRPC multi-callables on ``channel``."""

    def __init__(self, channel: Any) -> None:
        prefix = f"/{SERVICE_NAME}/"
        self.ListModels: Any = channel.unary_unary(
            prefix + "ListModels",
            request_serializer=service_pb2.ListModelsRequest.SerializeToString,
            response_deserializer=service_pb2.ListModelsResponse.FromString,
        )
        self.GetModelMetadata: Any = channel.unary_unary(
            prefix + "GetModelMetadata",
            request_serializer=service_pb2.GetModelMetadataRequest.SerializeToString,
            response_deserializer=service_pb2.GetModelMetadataResponse.FromString,
        )
        self.GetServerInfo: Any = channel.unary_unary(
            prefix + "GetServerInfo",
            request_serializer=service_pb2.GetServerInfoRequest.SerializeToString,
            response_deserializer=service_pb2.GetServerInfoResponse.FromString,
        )
        self.Predict: Any = channel.unary_unary(
            prefix + "Predict",
            request_serializer=service_pb2.PredictRequest.SerializeToString,
            response_deserializer=service_pb2.PredictResponse.FromString,
        )
        self.ListSessions: Any = channel.unary_unary(
            prefix + "ListSessions",
            request_serializer=service_pb2.ListSessionsRequest.SerializeToString,
            response_deserializer=service_pb2.ListSessionsResponse.FromString,
        )
        self.WatchEpisodes: Any = channel.unary_stream(
            prefix + "WatchEpisodes",
            request_serializer=service_pb2.WatchEpisodesRequest.SerializeToString,
            response_deserializer=service_pb2.WatchEpisodesResponse.FromString,
        )
        self.GetModelArtifact: Any = channel.unary_stream(
            prefix + "GetModelArtifact",
            request_serializer=service_pb2.GetModelArtifactRequest.SerializeToString,
            response_deserializer=service_pb2.GetModelArtifactResponse.FromString,
        )
        self.StreamEpisode: Any = channel.stream_stream(
            prefix + "StreamEpisode",
            request_serializer=service_pb2.StreamEpisodeRequest.SerializeToString,
            response_deserializer=service_pb2.StreamEpisodeResponse.FromString,
        )
