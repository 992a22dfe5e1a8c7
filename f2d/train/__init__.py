"""Training the Face2Diffusion mapping network (CGDR + Expression Guidance) with diffusers.

Frozen: the SD1.x UNet, VAE and text encoder, and the MSID encoder. Trained: the mapping network,
``null_exp`` included. See :mod:`f2d.train.loss` for the objective and :mod:`f2d.train.trainer`
for the loop.
"""
