"""Heirloom from Python, with nothing but grpcio and stubs generated from proto/.

Imports a small MLP as a base model, submits a `direct` job that inherits it (a copy
scaled by 0.5), watches the job to its end, then reads the new model's lineage and the
provenance of its tensors. Generate the stubs first (see README.md in this folder):

    python -m grpc_tools.protoc -I proto --python_out=stubs --grpc_python_out=stubs \
        proto/heirloom/v1/*.proto
    PYTHONPATH=stubs python clients/python/example.py --coordinator 127.0.0.1:7070 \
        --ca-cert certs/ca.pem --token-file admin.token

The token may also come in HEIRLOOM_TOKEN. Exits 1 with the server's status code and
message if a call is refused.
"""

import argparse
import json
import struct
import sys
import uuid

import grpc

from heirloom_channel import add_connection_arguments, channel
from heirloom.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc, models_pb2, models_pb2_grpc


def mlp_weights(input_features, hidden, num_classes):
    """A safetensors file for an MLP (PyTorch's state-dict names), small deterministic values."""
    shapes = {}
    width = input_features
    for index, size in enumerate(hidden):
        shapes[f"hidden.{index}.weight"] = [size, width]
        shapes[f"hidden.{index}.bias"] = [size]
        width = size
    shapes["fc.weight"] = [num_classes, width]
    shapes["fc.bias"] = [num_classes]
    header, data = {}, b""
    for name in sorted(shapes):
        count = 1
        for dim in shapes[name]:
            count *= dim
        values = [((i % 7) - 3) / 10.0 for i in range(count)]
        start = len(data)
        data += struct.pack(f"<{count}f", *values)
        header[name] = {"dtype": "F32", "shape": shapes[name], "data_offsets": [start, len(data)]}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_connection_arguments(parser, "submitter (or admin)")
    args = parser.parse_args()

    suffix = uuid.uuid4().hex[:8]
    with channel(args) as connection:
        models = models_pb2_grpc.ModelServiceStub(connection)
        jobs = jobs_pb2_grpc.JobServiceStub(connection)

        base = models.ImportModel(models_pb2.ImportModelRequest(
            name=f"py-base-{suffix}",
            architecture=common_pb2.Architecture(mlp=common_pb2.Mlp(input_features=8, hidden=[16], num_classes=3)),
            weights=mlp_weights(8, [16], 3),
        )).model
        print(f"imported {base.name} ({base.id})")

        job = jobs.SubmitJob(jobs_pb2.SubmitJobRequest(
            spec=common_pb2.JobSpec(
                kind=common_pb2.JOB_KIND_DIRECT,
                model_name=f"py-half-{suffix}",
                parent_id=base.id,
                scale=0.5,
            ),
            request_id=f"example-{suffix}",  # a retried submission returns the same job
        )).job
        print(f"submitted job {job.id}")

        for response in jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id)):
            event = response.event
            if event.WhichOneof("event") == "state":
                state = common_pb2.JobState.Name(event.state)
                print(f"  {state}" + (f": {event.message}" if event.message else ""))
            elif event.WhichOneof("event") == "progress":
                print(f"  step {event.progress.step}")
        job = jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).job
        if job.state != common_pb2.JOB_STATE_SUCCEEDED:
            sys.exit(f"job ended {common_pb2.JobState.Name(job.state)}: {job.error}")

        child = models.GetModel(models_pb2.GetModelRequest(model=job.model_id)).model
        ancestors = models.ListAncestors(models_pb2.ListAncestorsRequest(model=child.id)).entries
        print(f"lineage of {child.name}:")
        for entry in ancestors:
            print(f"  depth {entry.depth}: {entry.model.name} ({entry.model.source})")
        tensors = models.ListModelTensors(models_pb2.ListModelTensorsRequest(model=child.id)).tensors
        for tensor in tensors:
            print(f"  tensor {tensor.name}: {common_pb2.TensorStatus.Name(tensor.status)} from {tensor.origin_model_name or '-'}")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as error:
        print(f"refused: {error.code().name}: {error.details()}", file=sys.stderr)
        sys.exit(1)
