-- Recipes: how a model is made, without its inputs. Immutable: rows are only inserted.
CREATE TABLE recipes (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    kind text NOT NULL,
    body jsonb NOT NULL,
    -- The recipe this version was derived from, and the merge patch that made it.
    parent_id uuid REFERENCES recipes (id),
    patch jsonb,
    -- The model whose job the recipe was taken from.
    source_model_id uuid REFERENCES models (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recipes_name_version_unique UNIQUE (name, version),
    CONSTRAINT recipes_patch_with_parent CHECK ((parent_id IS NULL) = (patch IS NULL))
);
CREATE INDEX recipes_by_parent ON recipes (parent_id) WHERE parent_id IS NOT NULL;

CREATE FUNCTION refuse_recipe_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'recipes are immutable: derive a new version instead';
END $$;
CREATE TRIGGER recipes_are_immutable BEFORE UPDATE OR DELETE ON recipes
    FOR EACH ROW EXECUTE FUNCTION refuse_recipe_change();

-- The recipe version a model's job ran, written with the model.
ALTER TABLE models ADD COLUMN recipe_id uuid REFERENCES recipes (id);
CREATE INDEX models_by_recipe ON models (recipe_id) WHERE recipe_id IS NOT NULL;

-- Label counts, overall and per-feature means and deviations, measured at registration;
-- NULL for datasets registered before.
ALTER TABLE datasets ADD COLUMN statistics jsonb;
