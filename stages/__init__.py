"""crisis-mm pipeline stages: prepare -> featurize -> train -> evaluate (and predict)."""
