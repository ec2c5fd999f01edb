"""Datasets (MNIST and Fashion-MNIST IDX files, the 8×8 digits, the spiral), mini-batches,
and preprocessing fitted on the training split only."""
from funcnn.data import augment
from funcnn.data.batching import batches
from funcnn.data.idx import download, fashion_mnist, mnist, parse_idx
from funcnn.data.preprocessing import (
    MeanSubtraction, MinMax, Projection, Standardization, ZcaWhitening, fit_mean_subtraction,
    fit_min_max, fit_pca, fit_pca_whitening, fit_standardization, fit_zca_whitening, split)
from funcnn.data.toy import digits, spiral
from funcnn.data.text import CharText, char_text, text_windows

__all__ = ["CharText", "MeanSubtraction", "MinMax", "Projection", "Standardization", "ZcaWhitening",
           "augment", "batches", "char_text", "digits", "download", "fashion_mnist",
           "fit_mean_subtraction", "fit_min_max", "fit_pca", "fit_pca_whitening",
           "fit_standardization", "fit_zca_whitening", "mnist", "parse_idx", "spiral", "split",
           "text_windows"]
