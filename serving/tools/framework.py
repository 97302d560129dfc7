"""The framework floor: an empty Ray Serve deployment (what Ray itself costs per request)."""


from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

__all__ = ["EmptyDeployment"]

_api = FastAPI()


@serve.deployment(name="empty", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(_api)
class EmptyDeployment:
    """Reads the body and answers an empty ranking: no recall, no model."""

    @_api.post("/")
    async def rank(self, request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"items": []})
