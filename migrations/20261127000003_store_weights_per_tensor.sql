-- Weights are stored per tensor, content-addressed: a model's manifest is its rows in
-- model_tensors, and its weights file is assembled from them. weights_sha256 is the hash
-- of that assembled (canonical) file.
ALTER TABLE models DROP COLUMN weights_path;
