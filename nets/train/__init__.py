"""Self-supervised training of the MRAA networks (reconstruction stage and AVD stage).

Modules: :mod:`.data` (video datasets in the official layouts), :mod:`.augment` (flips and colour
jitter applied identically to both frames of a sample), :mod:`.transforms` (random affine +
thin-plate-spline warps for the equivariance losses), :mod:`.vgg` (VGG19 feature extractor),
:mod:`.losses` (perceptual pyramid, its L1+SSIM fallback, equivariance), :mod:`.state`
(checkpoints that resume bit-identically), :mod:`.loop` (the reconstruction stage), :mod:`.avd`
(the AVD stage), :mod:`.cli` (``mra-train``), :mod:`.layout` (the ``ID#clip`` names) and
:mod:`.prepare` (``mra-prepare``: raw videos -> the layout :mod:`.data` reads), :mod:`.landmarks` (the face-mesh
sidecars beside the clips).
"""


def mra_train() -> None:
    """The console script (Ctrl-C while the training modules import: exit 130)."""
    from nets.errors import launch
    launch("nets.train.cli")
