"""Feature encoders that travel inside the logged model (pickled by value: the serving image
does not ship ``tasks/``). Kept tiny and free of ctflows imports for that reason."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


class CategoryEncoder(TransformerMixin, BaseEstimator):
    """Numeric columns as float, categorical columns as pandas categories with the
    categories seen in training (unseen values and nulls become missing): what LightGBM's
    native categorical support reads, at the cost of a hash lookup per value."""

    def __init__(self, numeric: list[str], categorical: list[str]) -> None:
        self.numeric = numeric
        self.categorical = categorical

    def fit(self, X: pd.DataFrame, y: Any = None) -> CategoryEncoder:
        self.categories_ = {
            c: pd.Index(pd.unique(X[c].dropna().astype(str))).sort_values()
            for c in self.categorical
        }
        self.feature_names_in_ = np.array([*self.numeric, *self.categorical], dtype=object)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        out = {c: pd.to_numeric(X[c], errors="coerce").astype("float64") for c in self.numeric}
        for c in self.categorical:
            values = X[c].astype("string")  # keeps nulls as nulls, unlike astype(str)
            out[c] = pd.Categorical(values, categories=self.categories_[c])
        return pd.DataFrame(out, index=X.index)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.array([*self.numeric, *self.categorical], dtype=object)
