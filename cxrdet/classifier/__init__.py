"""Image-level findings classifier: a torchvision CNN trained with Lightning on the HDF5 cache.

    config      ClassifierConfig (one flat dataclass, a reason beside each default)
    backbones   torchvision backbones by name, local --weights, the Grad-CAM target layer table
    labels      label sources recognised from the file: VinBigData train.csv, NIH CSV, ImageFolder
    data        cache + labels + folds -> Dataset / LightningDataModule (resized on the fly)
    transforms  flip, scale/shift, brightness/contrast
    module      the LightningModule (BCE with pos_weight / softmax CE; gathered validation metric)
    metrics     macro AUROC / accuracy on gathered predictions
    export      the inference artifact (state dict + config JSON)
    train       ``cxrdet train-classifier``
    evaluate    ``cxrdet evaluate-classifier``
"""
