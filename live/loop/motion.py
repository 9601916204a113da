"""The motion policy of a live session, apart from threads and engines: which region parameters
(and face-mesh landmarks, for the expression path) drive the portrait now, and relative to which
neutral face.

    motion = MotionState(MotionSettings())
    m = motion.update(regions, marks, t)   # this frame's regions (None: no face), landmarks (None: no mesh), seconds
    if m is not None:
        new = engine.transfer(avatar, m.driving, m.reference, mode)
        crop = expression.apply(crop, m.marks, m.reference_marks)   # when both are known

It smooths the parameters and the landmarks (One-Euro); takes as neutral the face most like the
portrait's expression (``like``, the current avatar's face mesh; without one, the most neutral face:
mouth closed, eyes open; :func:`live.expression.reference_score`) of the first
:data:`~live.expression.REFERENCE_WINDOW_S` after the start or :meth:`MotionState.recalibrate`
(``at_once``: the next face, however it looks: hot key r); holds the last pose when the face is
lost and then eases back to neutral (:class:`~live.loop.smoothing.LostFacePolicy`). Pure: no
clock, no threads, no engine; the live pipeline drives it once per tracked frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from export.engine import RegionParams

from ..expression import REFERENCE_WINDOW_S, PortraitFace, reference_score
from .smoothing import LostFacePolicy, OneEuroConfig, OneEuroFilter, RegionSmoother, blend


@dataclass(frozen=True)
class MotionSettings:
    """``smoothing``: One-Euro filtering of parameters and landmarks (``one_euro``); ``lost``: hold, then ease."""

    smoothing: bool = True
    one_euro: OneEuroConfig = field(default_factory=OneEuroConfig)
    lost: LostFacePolicy = field(default_factory=LostFacePolicy)


@dataclass(frozen=True)
class Motion:
    """What to animate: ``driving`` relative to ``reference`` (the neutral face), and the driver's
    landmarks ``marks`` now and ``reference_marks`` at the reference (None where no mesh was found).
    ``lost_for_s``: how long the face has been lost (None while it is found); ``found_again``: this
    frame found the face after it was lost."""

    driving: RegionParams
    reference: RegionParams
    marks: "np.ndarray | None" = None
    reference_marks: "np.ndarray | None" = None
    lost_for_s: "float | None" = None
    found_again: bool = False


class MotionState:
    """The motion of one live session (one driving face): see the module doc."""

    def __init__(self, settings: "MotionSettings | None" = None):
        self.settings = settings or MotionSettings()
        self._smoother = RegionSmoother(self.settings.one_euro, enabled=self.settings.smoothing)
        self._marks_filter = OneEuroFilter(self.settings.one_euro)
        self.reference: "RegionParams | None" = None
        self.reference_marks: "np.ndarray | None" = None
        self._reference_score = np.inf
        self._choose_until: "float | None" = None  # choosing the reference face until then
        self.like: "PortraitFace | None" = None  # the portrait whose expression the reference should match
        self._recalibrate = True
        self._at_once = False
        self._last: "RegionParams | None" = None
        self._last_marks: "np.ndarray | None" = None
        self._lost_since: "float | None" = None

    def recalibrate(self, at_once: bool = True) -> None:
        """A new neutral face: with ``at_once`` the face of the next frame that has one (hot key r),
        else the face of the first second from then on most like the portrait's (a new avatar)."""
        self._recalibrate = True
        self._at_once = at_once

    @property
    def lost(self) -> bool:
        """The last update had no face."""
        return self._lost_since is not None

    def update(self, regions: "RegionParams | None", marks: "np.ndarray | None", t: float) -> "Motion | None":
        """This frame's region parameters (None: no face found in it) and face-mesh landmarks (None:
        none found), at time ``t`` (seconds, increasing) -> what to animate, or None while no face
        has been seen yet."""
        if regions is None:
            if self._lost_since is None:
                self._lost_since = t
            if self._last is None or self.reference is None:
                return None  # nothing seen yet
            lost_for = t - self._lost_since
            w = self.settings.lost.weight(lost_for)
            eased = None
            if self._last_marks is not None and self.reference_marks is not None:
                eased = (1 - w) * self._last_marks + w * self.reference_marks
            return Motion(blend(self._last, self.reference, w), self.reference, eased, self.reference_marks,
                          lost_for_s=lost_for)
        found_again = self._lost_since is not None
        if found_again:  # a face found again starts a new track: no smoothing across the gap
            self._smoother.reset()
            self._marks_filter.reset()
        self._lost_since = None
        params = self._smoother(regions, t)
        self._last = params
        if marks is not None:
            self._last_marks = self._marks_filter(marks, t) if self.settings.smoothing else marks
        reference = self._choose_reference(params, self._last_marks, t)
        return Motion(params, reference, self._last_marks, self.reference_marks, found_again=found_again)

    def _choose_reference(self, params: RegionParams, marks: "np.ndarray | None", t: float) -> RegionParams:
        """The reference after this face: a new one after recalibrate(), a more neutral one within the window."""
        if self._recalibrate or self.reference is None:
            self._recalibrate = False
            self._choose_until = None if self._at_once else t + REFERENCE_WINDOW_S
            self._at_once = False
            self.reference, self.reference_marks = params.copy(), marks
            self._reference_score = np.inf if marks is None else reference_score(marks, self.like)
        elif self._choose_until is not None:
            if t > self._choose_until:
                self._choose_until = None
            elif marks is not None and reference_score(marks, self.like) < self._reference_score:
                self._reference_score = reference_score(marks, self.like)
                self.reference, self.reference_marks = params.copy(), marks
        return self.reference
