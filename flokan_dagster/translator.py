"""How a Flokan image asset becomes a Dagster asset spec: ``DagsterFlokanTranslator``.

The factory (:func:`~flokan_dagster.assets.build_flokan_image_asset`) describes each image asset
with :class:`FlokanImageAssetProps` and asks a translator for its :class:`dagster.AssetSpec`: its
key, dependencies, group, owners, tags, description, metadata and automation condition. Subclass
the translator to shape every asset of a pipeline at once (as with dagster-fivetran's
``DagsterFivetranTranslator``); the factory's own arguments then adjust single assets.

Example:
    >>> from flokan_dagster.catalog import CatalogMapping
    >>> class ShopTranslator(DagsterFlokanTranslator):
    ...     def get_asset_spec(self, props: FlokanImageAssetProps) -> dg.AssetSpec:
    ...         spec = super().get_asset_spec(props)
    ...         return spec.replace_attributes(key=spec.key.with_prefix("shop"), owners=["team:catalog"])
    >>> props = FlokanImageAssetProps(name="hero_images", catalog="data/catalog.csv",
    ...                               mapping=CatalogMapping(prompt_template="Studio photo of {title}"))
    >>> ShopTranslator().get_asset_spec(props).key.to_user_string()
    'shop/hero_images'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from flokan_dagster.catalog import CatalogMapping

METADATA_PREFIX = "flokan/"
"""Every metadata key this package writes starts with this namespace."""
DEFAULT_GROUP = "flokan"


@dataclass(frozen=True)
class FlokanImageAssetProps:
    """What a translator knows of one image asset.

    Attributes:
        name: The asset's name as given to the factory (the last part of its default key).
        catalog: The catalog file the asset reads.
        mapping: Its catalog mapping (prompt, source column, tier, provider, presets).
        upstream: The image asset each SKU's image is an edit of (a chained edit), if any.
        catalog_asset: The asset that validates the catalog (an upstream in the lineage), if any.
    """

    name: str
    catalog: str
    mapping: CatalogMapping
    upstream: dg.AssetKey | None = None
    catalog_asset: dg.AssetKey | None = None


class DagsterFlokanTranslator:
    """Translates a Flokan image asset's props into its :class:`dagster.AssetSpec`.

    The default spec: key ``AssetKey(props.name)``, group ``flokan``, kinds ``flokan`` and
    ``duckdb``, the catalog asset and the upstream image asset as dependencies, a description
    saying what the asset makes (generated, an edit of the row's source image, or a chained edit)
    and the catalog, prompt and model tier as ``flokan/…`` metadata.

    Example:
        >>> from flokan_dagster.catalog import CatalogMapping
        >>> spec = DagsterFlokanTranslator().get_asset_spec(FlokanImageAssetProps(
        ...     name="lifestyle_images", catalog="data/catalog.csv", upstream=dg.AssetKey("hero_images"),
        ...     mapping=CatalogMapping(prompt_template="The {title} at home")))
        >>> [dep.asset_key.to_user_string() for dep in spec.deps]
        ['hero_images']
    """

    def get_asset_spec(self, props: FlokanImageAssetProps) -> dg.AssetSpec:
        """The asset spec of one image asset.

        Args:
            props: The image asset's name, catalog, mapping and upstreams.
        """
        mapping = props.mapping
        prompt = mapping.prompt_template or f"the {mapping.prompt_column!r} column"
        metadata: dict[str, object] = {
            f"{METADATA_PREFIX}catalog": dg.MetadataValue.path(str(props.catalog)),
            f"{METADATA_PREFIX}prompt": prompt,
            f"{METADATA_PREFIX}model_tier": mapping.model_tier,
        }
        deps = [key for key in (props.catalog_asset, props.upstream) if key is not None]
        return dg.AssetSpec(
            key=dg.AssetKey(props.name),
            deps=deps,
            group_name=DEFAULT_GROUP,
            kinds={"flokan", "duckdb"},
            description=default_description(props),
            metadata=metadata,
        )


def default_description(props: FlokanImageAssetProps) -> str:
    """What the asset makes, in a sentence: generated, an edit of the row's photo, or a chained edit.

    Example:
        >>> from flokan_dagster.catalog import CatalogMapping
        >>> default_description(FlokanImageAssetProps("hero_images", "data/catalog.csv",
        ...                                           CatalogMapping(prompt_template="Photo of {title}")))
        "One Flokan image per SKU of catalog.csv, generated from the prompt 'Photo of {title}'."
    """
    mapping = props.mapping
    catalog = Path(props.catalog).name
    prompt = f"the prompt {mapping.prompt_template!r}" if mapping.prompt_template else f"the {mapping.prompt_column!r} column"
    if props.upstream is not None:
        return (
            f"One Flokan image per SKU of {catalog}: a chained edit of the SKU's "
            f"{props.upstream.to_user_string()} image with {prompt}."
        )
    if mapping.source_column:
        return (
            f"One Flokan image per SKU of {catalog}: an edit of the row's {mapping.source_column!r} image "
            f"with {prompt}, or generated from it when the row has none."
        )
    return f"One Flokan image per SKU of {catalog}, generated from {prompt}."
