"""Where the digits of a k-digit number go in a `numbers_embedded` image.

Shared by the TFDS builder (which writes real handwriting with PIL) and the number prior
(`jaxmia.models.number_generator`, which writes generated digits with JAX), so that both put a number's
digits in the same place at the same scale. Pure arithmetic: no TFDS, no JAX.
"""

DIGIT_SIZE = 28  # MNIST's digit images are 28x28
# Each digit keeps columns [3, 25) of its 28: MNIST centres every digit's 20x20 box by mass, and this band
# holds 99.9% of the subset's ink (0.12% lost on average), so neighbouring digits sit close as in a number.
DIGIT_COLUMNS = (3, 25)


def strip_shape(num_digits: int) -> tuple[int, int]:
  """`(height, width)` of `num_digits` digit column bands placed side by side."""
  return DIGIT_SIZE, num_digits * (DIGIT_COLUMNS[1] - DIGIT_COLUMNS[0])


def letterbox_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
  """`(new_height, new_width, top, left)`: an image scaled to fit `size x size` with its aspect ratio kept
  (sides rounded, at least 1) and placed at the centre of the square (offsets rounded down)."""
  scale = size / max(height, width)
  new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
  return new_height, new_width, (size - new_height) // 2, (size - new_width) // 2
