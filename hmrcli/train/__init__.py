"""Training the Multi-RoI regressor: data (SPIN/CLIFF ``.npz`` readers, the fixed 5-RoI
layout, augmentation, dataset mixing), the synthetic labelled dataset, losses and the loop.

Submodules are imported on use (``from hmrcli.train.data import SpinDataset``); this
package imports nothing eagerly, so ``import hmrcli.train`` stays cheap.
"""
