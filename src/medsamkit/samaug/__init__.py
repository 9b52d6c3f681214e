"""SAMAug (paper 000): everything-mode masks (everything, proposals, nms), prior maps and fusion (priors), and the
MedNet U-Net trained on them (unet, unet_targets, unet_train, unet_eval)."""
