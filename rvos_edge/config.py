"""Model configuration: one plain dataclass and four presets (DESIGN.md section 2).

Every number of the DESIGN table is a field here; the presets are plain data.
Fields the table does not fix are documented where they are declared, with the
choice made for each preset.

    >>> cfg = get_config("tiny")
    >>> cfg.grid, cfg.mask_size
    (4, 16)
    >>> ModelConfig.from_json(cfg.to_json()) == cfg
    True
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from rvos_edge.errors import UserError


class ConfigError(UserError):
    """A ModelConfig that cannot describe a model; the message says which field and why."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    # --- frozen CLIP -------------------------------------------------------------
    image_size: int = 64          # S: frames are S x S after resizing
    patch_size: int = 16
    vision_width: int = 64        # Cv
    vision_layers: int = 3        # Lv
    vision_heads: int = 2
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    embed_dim: int = 64           # Ce: CLIP's joint embedding width
    vocab_size: int = 49408       # CLIP BPE vocabulary
    context_length: int = 77
    # --- VLP-RVOS ----------------------------------------------------------------
    skip_layers: tuple[int, ...] = (0, 1, 2)   # shallow features, 0-based layer indices
    clip_len: int = 3             # Tc, the default clip length (the model runs any Tc >= 1)
    vision_prompts: int = 2       # m_v (= m_e, the number of language prompts)
    temporal_prompts: int = 2     # m_tmp
    history_prompts: int = 2      # m_h
    prompt_width: int = 32        # width of the unified prompts' encoder layer (not in the table)
    prompt_heads: int = 2         # heads of that layer (not in the table)
    fusion_heads: int = 2         # heads of the VLFF cross-attentions, width Ce (not in the table)
    str_width: int = 32           # C
    str_blocks: int = 1           # N
    str_heads: int = 2
    cube: int = 2                 # Mw
    mlp_ratio: float = 4.0        # FFN width / model width in the prompt encoder and the STR
    # --- ablations (the paper's components can be switched off) -------------------
    use_temporal_prompts: bool = True   # False: no temporal prompts and no PRTC
    use_history: bool = True            # False: no historical prompts (history inputs are ignored)

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip_layers", tuple(int(i) for i in self.skip_layers))
        self.validate()

    # --- derived sizes -----------------------------------------------------------
    @property
    def language_prompts(self) -> int:
        """m_e: DESIGN fixes m_e = m_v."""
        return self.vision_prompts

    @property
    def grid(self) -> int:
        """h = w = S / patch: side of the patch grid."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Np = h * w."""
        return self.grid * self.grid

    @property
    def mask_size(self) -> int:
        """Side of mask_logits: 4h."""
        return 4 * self.grid

    @property
    def max_words(self) -> int:
        """Most BPE tokens an expression keeps: 77 - 2 (SOS, EOS) - m_e."""
        return self.context_length - 2 - self.language_prompts

    # --- validation --------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"config {self.name!r}: {msg}")

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and not isinstance(v, bool) and f.name != "name":
                need(v >= 1, f"{f.name} must be >= 1, got {v}")
        need(self.image_size % self.patch_size == 0,
             f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for w, h, what in ((self.vision_width, self.vision_heads, "vision"),
                           (self.text_width, self.text_heads, "text"),
                           (self.embed_dim, self.fusion_heads, "fusion (embed_dim)"),
                           (self.prompt_width, self.prompt_heads, "prompt"),
                           (self.str_width, self.str_heads, "str")):
            need(w % h == 0, f"{what} width {w} is not divisible by its {h} heads")
        need(len(self.skip_layers) == 3,
             f"skip_layers must name exactly 3 layers (the head uses them at h, 2h, 4h), got {list(self.skip_layers)}")
        for i in self.skip_layers:
            need(0 <= i < self.vision_layers,
                 f"skip layer {i} out of range: the vision encoder has layers 0..{self.vision_layers - 1}")
        need(list(self.skip_layers) == sorted(set(self.skip_layers)),
             f"skip_layers must be strictly increasing, got {list(self.skip_layers)}")
        need(self.max_words >= 1,
             f"{self.language_prompts} language prompts leave no room for words in a context of {self.context_length}")
        need(self.str_width % 32 == 0,
             f"str_width {self.str_width} must be a multiple of 32 (the head's GroupNorms of 8 groups at C/4 channels)")
        need(self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio}")

    # --- (de)serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["skip_layers"] = list(self.skip_layers)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError("config JSON must be an object")
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # tiny: tests only.
    "tiny": ModelConfig(name="tiny"),
    # demo: the model trained on the synthetic world.
    "demo": ModelConfig(
        name="demo", image_size=128, patch_size=16,
        vision_width=192, vision_layers=6, vision_heads=3,
        text_width=128, text_layers=4, text_heads=2, embed_dim=128,
        skip_layers=(1, 3, 4), clip_len=6,
        vision_prompts=4, temporal_prompts=2, history_prompts=2,
        prompt_width=64, prompt_heads=2, fusion_heads=2,
        str_width=64, str_blocks=2, str_heads=4, cube=4),
    # vit-b16 / vit-l14: OpenAI's CLIP ViT-B/16 and ViT-L/14 backbones.
    "vit-b16": ModelConfig(
        name="vit-b16", image_size=352, patch_size=16,
        vision_width=768, vision_layers=12, vision_heads=12,
        text_width=512, text_layers=12, text_heads=8, embed_dim=512,
        skip_layers=(3, 7, 9), clip_len=6,
        vision_prompts=10, temporal_prompts=4, history_prompts=2,
        prompt_width=256, prompt_heads=4, fusion_heads=8,
        str_width=256, str_blocks=4, str_heads=8, cube=11),
    "vit-l14": ModelConfig(
        name="vit-l14", image_size=336, patch_size=14,
        vision_width=1024, vision_layers=24, vision_heads=16,
        text_width=768, text_layers=12, text_heads=12, embed_dim=768,
        skip_layers=(6, 14, 18), clip_len=6,
        vision_prompts=10, temporal_prompts=4, history_prompts=2,
        prompt_width=256, prompt_heads=4, fusion_heads=12,
        str_width=256, str_blocks=4, str_heads=8, cube=12),
}


def get_config(name: str) -> ModelConfig:
    """The preset called `name`; a ConfigError naming the presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None
