"""The framework floor: an empty Ray Serve deployment (what Ray itself costs per request).

Owns: the deployment the benchmark measures as the framework's floor. Must not touch: ranking.
"""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.ray_runtime import ingress_deployment

__all__ = ["EmptyDeployment"]

_api = FastAPI()


class _Empty:
    """Reads the body and answers an empty ranking: no recall, no model."""

    @_api.post("/")
    async def rank(self, request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"items": []})


EmptyDeployment = ingress_deployment(_Empty, _api, name="empty", max_ongoing_requests=256,
                                     ray_actor_options={"num_cpus": 0})
