"""Datasets: MNIST and Fashion-MNIST (IDX files), the 8×8 digits, the synthetic spiral."""
from funcnn.data.idx import download, fashion_mnist, mnist, parse_idx
from funcnn.data.toy import digits, spiral
