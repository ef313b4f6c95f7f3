-- Token datasets for language models: many shards, each a blob of token ids
-- ([sequences, length]), registered by their list. `sha256` then names the manifest (the
-- shards in order, the vocabulary, the padding token), not a blob; `num_features` holds
-- the sequence length and `num_classes` the vocabulary size. NULL for a classification
-- dataset. Every shard is live for as long as the dataset is: garbage collection and the
-- lease-bound download check read them from here.
ALTER TABLE datasets
    ADD COLUMN token_shards jsonb
        CONSTRAINT datasets_token_shards_array CHECK (jsonb_typeof(token_shards) = 'array'),
    ADD COLUMN pad_token_id integer
        CONSTRAINT datasets_pad_token_id_in_vocabulary
        CHECK (pad_token_id IS NULL OR (pad_token_id >= 0 AND pad_token_id < num_classes));
