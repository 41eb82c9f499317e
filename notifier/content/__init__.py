"""Content: what a notification says, rendered from templates in the user's language.

Plain Python over the template files; it imports nothing of ours but settings, so intake (to
refuse an event whose template or params are wrong), routing (to render each delivery in its
user's locale), the digests and the previews all call the same engine.
"""
