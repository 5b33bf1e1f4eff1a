"""``AutoProcessor`` for InfiMed exports: prompts and images prepared exactly as in training.

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nIs there a fracture?"}],
                                         add_generation_prompt=True)
    inputs = processor(text=text, images=image)          # input_ids, attention_mask, pixel_values
    out = model.generate(**inputs, max_new_tokens=16)

Each ``<image>`` in the text becomes ``image_seq_length`` copies of the image token, so the
prompt holds one image position per reduced image token, as the model expects. Images go through
the training pipeline's preprocessing (megatron_infimed.data.images, mirrored here because remote
code must stand alone; a test holds the two equal): high-bit-depth greyscale windowed to its own
min..max, RGB, then ``pad`` (long side scaled to the size, bicubic, centred on the mean colour)
or ``crop`` (short side scaled, centre crop), then ``(x / 255 - mean) / std``.
"""

import json
import os

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature

PROCESSOR_CONFIG = "processor_config.json"


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        scaled = (array - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


class InfiMedProcessor:
    def __init__(self, tokenizer, image_size: int, image_mean, image_std, image_seq_length: int,
                 image_token: str = "<|image_pad|>", placeholder: str = "<image>", resize_mode: str = "pad"):
        if resize_mode not in ("pad", "crop"):
            raise ValueError(f"unknown resize_mode {resize_mode!r}; expected 'pad' or 'crop'")
        self.tokenizer, self.image_size, self.image_seq_length = tokenizer, int(image_size), int(image_seq_length)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.image_token, self.placeholder, self.resize_mode = image_token, placeholder, resize_mode
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {image_token!r} token; it cannot mark image positions")

    _auto_class = None

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoProcessor"):
        """Called by ``AutoProcessor`` on remote-code classes; records the auto class, as transformers' own do."""
        cls._auto_class = auto_class

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        config_file = os.path.join(str(path), PROCESSOR_CONFIG)
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"{path} has no {PROCESSOR_CONFIG}; it was not exported by infimed-convert")
        with open(config_file) as file:
            config = json.load(file)
        tokenizer_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "cache_dir", "local_files_only",
                                                                      "token", "trust_remote_code")}
        tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs)
        settings = {k: config[k] for k in ("image_size", "image_mean", "image_std", "image_seq_length",
                                           "image_token", "placeholder", "resize_mode") if k in config}
        return cls(tokenizer, **settings)

    # -- images ---------------------------------------------------------------------------------
    def image_to_uint8(self, image: Image.Image) -> torch.Tensor:
        """PIL image → [3, size, size] uint8, as the training loader decodes it."""
        image = to_rgb(image)
        size, (w, h) = self.image_size, image.size
        if image.size != (size, size):
            if self.resize_mode == "crop":
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                image = image.resize((nw, nh), Image.Resampling.BICUBIC)
                left, top = (nw - size) // 2, (nh - size) // 2
                image = image.crop((left, top, left + size, top + size))
            else:
                scale = size / max(w, h)
                nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
                canvas = Image.new("RGB", (size, size), tuple(round(m * 255) for m in self.image_mean))
                canvas.paste(image.resize((nw, nh), Image.Resampling.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
                image = canvas
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        return pixels.to(torch.float32, copy=True).mul_(1.0 / (255.0 * std)).add_(-mean / std)

    # -- text -----------------------------------------------------------------------------------
    def apply_chat_template(self, messages, **kwargs):
        """The training chat template (held by the tokenizer); ``<image>`` stays a placeholder."""
        kwargs.setdefault("tokenize", False)
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(self, text=None, images=None, return_tensors="pt", padding=True, **kwargs):
        if text is None:
            raise ValueError("InfiMedProcessor needs text (a prompt with one <image> per image)")
        texts = [text] if isinstance(text, str) else list(text)
        if images is None:
            images = []
        elif isinstance(images, Image.Image):
            images = [images]
        flat = [image for group in images for image in (group if isinstance(group, (list, tuple)) else [group])]
        wanted = sum(t.count(self.placeholder) for t in texts)
        if wanted != len(flat):
            raise ValueError(f"the text holds {wanted} {self.placeholder} placeholder(s) but {len(flat)} image(s) "
                             f"were given; give one image per placeholder, in order")
        if any(self.image_token in t for t in texts):
            raise ValueError(f"the text already holds {self.image_token!r}; write {self.placeholder!r} instead")
        expanded = [t.replace(self.placeholder, self.image_token * self.image_seq_length) for t in texts]
        encoded = self.tokenizer(expanded, add_special_tokens=False, padding=padding and len(expanded) > 1,
                                 return_tensors=return_tensors, **kwargs)
        data = dict(encoded)
        if flat:
            data["pixel_values"] = self.normalize(torch.stack([self.image_to_uint8(image) for image in flat]))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
