"""The real-time loop of mra-live (and of mra-web's webcam tab): :mod:`.capture` (camera, video file,
or any frame source; the latest frame wins), :mod:`.pipeline` (face crop -> engine -> paste-back,
on threads), :mod:`.smoothing` (One-Euro filters of the region parameters, the lost-face policy),
:mod:`.sinks` (virtual camera, window, recording) and :mod:`.stats` (fps, latency, drops)."""
