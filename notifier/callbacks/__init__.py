"""Callbacks to producers: where each wants its deliveries' outcomes, signed, and the POSTing of them.

- endpoints: a producer's registration (an API key's or an app's URL and signing secret)
- urls: which URLs may be registered and which addresses may be called (SSRF)
- signing: the Notifier-Signature header (HMAC-SHA256 over timestamp.body, Stripe's scheme)
- delivery: draining the outbox (notifier.store.callback_outbox) in signed, batched POSTs with retries
"""
