"""Callback registration: a producer's URL for its deliveries' outcomes (its API key's, or an app's)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from entrypoints.api import auth
from notifier.accounts.api_keys import KeyInfo
from notifier.callbacks import endpoints, urls

router = APIRouter(tags=["callbacks"])
# The registry's rule for an app's name (notifier.apps.APP_NAME).
AppName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class CallbackRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=urls.MAX_URL_CHARS, examples=["https://producer.example.com/notifier-events"],
                     description="https only; notifier POSTs signed JSON events here and follows no redirect.")


class Callback(BaseModel):
    producer: str = Field(description='"key:<api key id>" or "app:<name>"')
    url: str
    created_at: datetime
    updated_at: datetime
    pending: int = Field(description="Events not accepted yet (waiting, or being retried).")
    given_up: int = Field(description="Events not accepted within the retry window (counted, kept).")
    last_error: str | None


class CallbackCreated(Callback):
    secret: str = Field(description="Signs every POST (Notifier-Signature); shown only now.")


def _register(producer: str, url: str) -> dict[str, Any]:
    try:
        return endpoints.register(producer, url).as_dict()
    except urls.Refused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def _get(producer: str) -> dict[str, Any]:
    endpoint = endpoints.get(producer)
    if endpoint is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no callback registered")
    return endpoint.as_dict()


def _remove(producer: str) -> Response:
    if not endpoints.remove(producer):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no callback registered")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/v1/callbacks", response_model=CallbackCreated, responses={422: {"description": "A refused URL"}})
def register(body: CallbackRegistration, key: KeyInfo = Depends(auth.send)) -> dict[str, Any]:
    """Set where this key's deliveries' outcomes are POSTed; a new signing secret each time, shown once."""
    return _register(endpoints.for_key(key.id), body.url)


@router.get("/v1/callbacks", response_model=Callback, responses={404: {"description": "None registered"}})
def show(key: KeyInfo = Depends(auth.send)) -> dict[str, Any]:
    """This key's callback: URL and the events waiting or given up (never the secret)."""
    return _get(endpoints.for_key(key.id))


@router.delete("/v1/callbacks", status_code=status.HTTP_204_NO_CONTENT,
               responses={404: {"description": "None registered"}})
def remove(key: KeyInfo = Depends(auth.send)) -> Response:
    """Stop this key's callbacks (events still waiting are dropped)."""
    return _remove(endpoints.for_key(key.id))


@router.put("/v1/admin/callbacks/apps/{app}", response_model=CallbackCreated, dependencies=[Depends(auth.admin)],
            responses={422: {"description": "A refused URL, or an app the registry (NOTIFIER_APPS_FILE) does not name"}})
def register_app(app: AppName, body: CallbackRegistration) -> dict[str, Any]:
    """Set an app's callback (events sent with `app`: send_notification.delay, Kafka); the secret shown once."""
    try:
        producer = endpoints.for_app(app, registering=True)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    return _register(producer, body.url)


@router.get("/v1/admin/callbacks/apps/{app}", response_model=Callback, dependencies=[Depends(auth.admin)],
            responses={404: {"description": "None registered"}})
def show_app(app: AppName) -> dict[str, Any]:
    """An app's callback: URL and the events waiting or given up."""
    return _get(endpoints.for_app(app))


@router.delete("/v1/admin/callbacks/apps/{app}", status_code=status.HTTP_204_NO_CONTENT,
               dependencies=[Depends(auth.admin)], responses={404: {"description": "None registered"}})
def remove_app(app: AppName) -> Response:
    """Stop an app's callbacks."""
    return _remove(endpoints.for_app(app))
