"""Operator routes (admin scope): replay failed deliveries."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from entrypoints.api import auth
from notifier.accounts.api_keys import KeyInfo
from notifier.pipeline.replay import Selection

router = APIRouter(prefix="/v1/admin", tags=["operations"])


class ReplayedDelivery(BaseModel):
    delivery_id: int
    notification_id: str
    user_id: str
    channel: str
    provider: str | None
    failed_at: datetime | None
    attempts: int
    replays: int
    reason: str | None


class ReplayResponse(BaseModel):
    dry_run: bool
    limit: int
    matched: int = Field(description="Eligible failed deliveries the selection matches, before the limit.")
    replayed: int = Field(description="Deliveries queued again (in a dry run: that would be).")
    delivery_ids: list[int]
    refused_already_sent: list[int] = Field(description="Matched, but a provider accepted them already: never resent.")
    sample: list[ReplayedDelivery]


@router.post("/replay", response_model=ReplayResponse,
             responses={422: {"description": "A bad selection, or a limit above NOTIFIER_REPLAY_LIMIT_MAX"}})
def replay(selection: Selection, key: KeyInfo = Depends(auth.admin)) -> dict[str, Any]:
    """Send failed deliveries again under their idempotency keys (only `failed` ones no provider accepted)."""
    from tasks.replay import replay_failed

    try:
        result = replay_failed(selection, by=f"key:{key.id} ({key.name})")
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    return result.as_dict()
