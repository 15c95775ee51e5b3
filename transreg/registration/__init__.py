"""The registration pipeline: NIfTI in and out, preprocessing onto the model grid, the
affine stage, network inference, instance optimisation, the full transform, outputs
(NIfTI, ITK/Learn2Reg displacements, overlay, report).

``from transreg.registration.pipeline import register`` (also ``transreg.register``).
"""
