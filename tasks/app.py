"""The Celery app, configured only from celeryconfig.py."""
from celery import Celery

app = Celery("notifier")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["tasks"], related_name="pipeline", force=True)
