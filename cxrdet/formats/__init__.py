"""Every file format that crosses a pipeline stage, one module each; none of them imports torch.

    atomic       temp file + os.replace for every file a command writes (text, CSV, JSON NaN -> null)
    labels       the VinBigData label CSV (train.csv)
    folds        FOLDS.csv (image_id,fold), written by ``cxrdet split``
    submission   the Kaggle submission CSV (image_id,PredictionString)
    image_level  the image-level CSV (p_abnormal and one probability per class)
    provenance   ``<csv stem>.provenance.json``: which model predicted which images
    failures     the errors CSV (item,reason) of per-input failures, exit code 3
"""
