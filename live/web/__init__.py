"""mra-web: :mod:`.app` (configuration, routes, serving, the command line), :mod:`.upload`
(streamed, size-limited form uploads), :mod:`.guard` (which requests are answered: Host, Origin,
token), :mod:`.jobs` (the animation job queue), :mod:`.session`
(the webcam tab: browser source, sink and session on the mra-live loop) and ``static/`` (the page)."""
