"""The real-time loop of mra-live (and of mra-web's webcam tab): :mod:`.capture` (camera, video file,
or any frame source; the latest frame wins), :mod:`.pipeline` (face crop -> engine -> paste-back,
on threads), :mod:`.motion` (which parameters drive the portrait: smoothing, neutral pose, lost
face), :mod:`.smoothing` (One-Euro filters, the lost-face policy), :mod:`.pacing` (the fps cap,
the last frame again while the engine is late), :mod:`.keys` (hot keys), :mod:`.overlay`,
:mod:`.sinks` (virtual camera, window, recording) and :mod:`.stats` (fps, latency, drops)."""
