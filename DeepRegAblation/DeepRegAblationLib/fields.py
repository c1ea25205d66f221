"""Dense displacement fields: warping, composition, integration, resizing, affine, Jacobian.

Conventions (stated once, used everywhere in DeepRegAblationLib):

- Tensors are batch-first: images ``(B, C, D, H, W)`` in 3D or ``(B, C, H, W)`` in 2D.
- A displacement field ``disp_vox`` has one channel per spatial axis, in the same axis order
  as the tensor (channel 0 moves along D in 3D, along H in 2D), in voxel units of the grid
  it lives on: ``(B, ndim, *spatial)``.
- ``warp(m, u)(x) = m(x + u(x))`` with linear interpolation at voxel centres
  (``align_corners=True`` semantics): voxel ``i`` sits at coordinate ``i``, so ``u = 0`` is
  exactly the identity (not merely to rounding error: the interpolation here is done with
  integer indices and fractional weights, which are exactly 0 and 1 at grid points).
- Affine matrices ``matrix_vox`` are homogeneous ``(B, ndim + 1, ndim + 1)`` maps of voxel
  coordinates in tensor axis order: ``y = M[:ndim, :ndim] @ x + M[:ndim, ndim]``.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Spacing = Optional[Union[float, Sequence[float], torch.Tensor]]


# --------------------------------------------------------------------------- validation
def ndim_of_disp(disp: torch.Tensor, name: str = "disp_vox") -> int:
    """Validate a displacement field and return its number of spatial dimensions."""
    if not isinstance(disp, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(disp).__name__}")
    if disp.dim() not in (4, 5):
        raise ValueError(
            f"{name} must have shape (B, ndim, *spatial) with ndim 2 or 3, got shape {tuple(disp.shape)}"
        )
    ndim = disp.dim() - 2
    if disp.shape[1] != ndim:
        raise ValueError(
            f"{name} must have {ndim} channels (one per spatial axis) for a {ndim}D field, "
            f"got shape {tuple(disp.shape)}"
        )
    if not disp.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {disp.dtype}")
    return ndim


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``tensor`` holds NaN or inf values."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf values (shape {tuple(tensor.shape)})")


def spacing_tuple(spacing: Spacing, ndim: int) -> Tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().flatten().tolist()
    if isinstance(spacing, (int, float)):
        return (float(spacing),) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing must have {ndim} entries for a {ndim}D field, got {spacing}")
    if any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {spacing}")
    return spacing


# --------------------------------------------------------------------------- grids
def identity_grid(
    shape: Sequence[int], device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Voxel coordinates of every grid point: ``(ndim, *shape)``, channel ``i`` = index along axis ``i``."""
    if len(shape) not in (2, 3) or any(int(n) < 1 for n in shape):
        raise ValueError(f"shape must be 2 or 3 positive sizes, got {tuple(shape)}")
    axes = [torch.arange(int(n), device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


# --------------------------------------------------------------------------- sampling
def sample(
    image: torch.Tensor, coords_vox: torch.Tensor, mode: str = "bilinear", padding: str = "border"
) -> torch.Tensor:
    """Sample ``image`` at voxel coordinates.

    Args:
        image: ``(B, C, *in_spatial)``.
        coords_vox: ``(B or 1, ndim, *out_spatial)`` voxel coordinates in ``image``'s axis order.
        mode: ``"bilinear"`` (linear in 2D and 3D) or ``"nearest"``.
        padding: ``"border"`` (clamp to the edge) or ``"zeros"`` (0 outside).

    Returns:
        ``(B, C, *out_spatial)``. Linear values come from ``torch.nn.functional.grid_sample``
        (fast; its coordinate normalisation rounds, ~1e-7 of a voxel in float32); points whose
        coordinates are all integers get the voxel values exactly (integer gathers), so an
        identity or integer-shift field reproduces the input bit for bit. The gradient is
        grid_sample's everywhere. Nearest values always come from integer gathers.
    """
    ndim = image.dim() - 2
    if ndim not in (2, 3):
        raise ValueError(f"image must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(image.shape)}")
    if coords_vox.dim() != ndim + 2 or coords_vox.shape[1] != ndim:
        raise ValueError(
            f"coords_vox must be (B, {ndim}, *spatial) for image of shape {tuple(image.shape)}, "
            f"got {tuple(coords_vox.shape)}"
        )
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if padding not in ("border", "zeros"):
        raise ValueError(f"padding must be 'border' or 'zeros', got {padding!r}")
    if coords_vox.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"coords_vox batch {coords_vox.shape[0]} does not match image batch {image.shape[0]}")
    if not image.is_floating_point():
        image = image.float()
    coords_vox = coords_vox.to(image.dtype).expand(image.shape[0], *coords_vox.shape[1:])
    if mode == "nearest":
        return _gather_sample(image, coords_vox, mode, padding)
    out = _grid_sample(image, coords_vox, mode, padding)
    needs_grad = out.requires_grad
    with torch.no_grad():
        flat_coords = coords_vox.detach().reshape(coords_vox.shape[0], ndim, -1)
        integral = torch.all(flat_coords == torch.round(flat_coords), dim=1)  # (B, N): on a grid point
        if not bool(integral.any()):
            return out
        flat_out = out.detach().reshape(out.shape[0], out.shape[1], -1)
        correction = torch.zeros_like(flat_out) if needs_grad else None
        for b in range(out.shape[0]):
            points = torch.nonzero(integral[b]).squeeze(1)
            if points.numel() == 0:
                continue
            exact = _gather_sample(image[b : b + 1].detach(), flat_coords[b : b + 1, :, points], "nearest", padding)[0]
            if needs_grad:  # keep grid_sample's gradient, take the exact value
                correction[b, :, points] = exact - flat_out[b, :, points]
            else:
                flat_out[b, :, points] = exact
    return out + correction.reshape(out.shape) if needs_grad else out


def _grid_sample(image: torch.Tensor, coords_vox: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """``F.grid_sample`` at voxel coordinates (``align_corners=True``)."""
    ndim = image.dim() - 2
    in_shape = image.shape[2:]
    norm = [coords_vox[:, a] * (2.0 / max(int(in_shape[a]) - 1, 1)) - 1.0 for a in range(ndim)]
    grid = torch.stack(norm[::-1], dim=-1)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)


def _gather_sample(image: torch.Tensor, coords_vox: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """Exact linear / nearest sampling by integer gathers (see :func:`sample`)."""
    ndim = image.dim() - 2
    batch, channels = image.shape[:2]
    in_shape = [int(n) for n in image.shape[2:]]
    out_shape = coords_vox.shape[2:]
    coords = coords_vox.reshape(batch, ndim, -1)
    flat = image.reshape(batch, channels, -1)
    strides = [1] * ndim
    for axis in range(ndim - 2, -1, -1):
        strides[axis] = strides[axis + 1] * in_shape[axis + 1]

    def gather(index: torch.Tensor) -> torch.Tensor:
        return torch.gather(flat, 2, index[:, None].expand(batch, channels, -1))

    if mode == "nearest":
        index = torch.zeros_like(coords[:, 0], dtype=torch.long)
        inside = torch.ones_like(index, dtype=torch.bool)
        for axis in range(ndim):
            idx = torch.round(coords[:, axis]).long()
            inside = inside & (idx >= 0) & (idx < in_shape[axis])
            index = index + idx.clamp(0, in_shape[axis] - 1) * strides[axis]
        out = gather(index)
        if padding == "zeros":
            out = out * inside[:, None].to(out.dtype)
        return out.reshape(batch, channels, *out_shape)

    low_clip = 0 if padding == "border" else -1
    high_extra = 1 if padding == "border" else 0
    clamped = [coords[:, a].clamp(low_clip, in_shape[a] - high_extra) for a in range(ndim)]
    lower = [torch.floor(c) for c in clamped]
    frac = [c - lo for c, lo in zip(clamped, lower)]
    lower = [lo.long() for lo in lower]
    out = None
    for corner in itertools.product((0, 1), repeat=ndim):
        weight, index = None, None
        for axis, bit in enumerate(corner):
            w = frac[axis] if bit else 1.0 - frac[axis]
            idx = lower[axis] + bit
            if padding == "zeros":  # corners outside the image contribute nothing
                w = w * ((idx >= 0) & (idx < in_shape[axis])).to(w.dtype)
            idx = idx.clamp(0, in_shape[axis] - 1)
            weight = w if weight is None else weight * w
            index = idx * strides[axis] if index is None else index + idx * strides[axis]
        term = gather(index) * weight[:, None]
        out = term if out is None else out + term
    return out.reshape(batch, channels, *out_shape)


def warp(
    image: torch.Tensor, disp_vox: torch.Tensor, mode: str = "bilinear", padding: str = "border"
) -> torch.Tensor:
    """Warp ``image`` by ``disp_vox``: ``out(x) = image(x + disp_vox(x))``.

    Args:
        image: ``(B, C, *spatial)``.
        disp_vox: ``(B or 1, ndim, *spatial)`` in voxels, same spatial shape as ``image``.
        mode: ``"bilinear"`` or ``"nearest"`` (use nearest for label maps).
        padding: ``"border"`` or ``"zeros"``.

    Returns:
        ``(B, C, *spatial)``; ``warp(image, 0)`` equals ``image`` exactly.
    """
    ndim = ndim_of_disp(disp_vox)
    if image.dim() != ndim + 2:
        raise ValueError(
            f"image must be {ndim}D like disp_vox: image shape {tuple(image.shape)}, "
            f"disp_vox shape {tuple(disp_vox.shape)}"
        )
    if tuple(image.shape[2:]) != tuple(disp_vox.shape[2:]):
        raise ValueError(
            f"image and disp_vox spatial shapes differ: {tuple(image.shape[2:])} vs {tuple(disp_vox.shape[2:])}"
        )
    grid = identity_grid(disp_vox.shape[2:], device=disp_vox.device, dtype=disp_vox.dtype)
    return sample(image, grid[None] + disp_vox, mode=mode, padding=padding)


def warp_labels(labels: torch.Tensor, disp_vox: torch.Tensor) -> torch.Tensor:
    """A label map ``(B, 1, *spatial)`` warped by ``disp_vox`` with nearest neighbour: integer labels (``long``)."""
    return torch.round(warp(labels.float(), disp_vox, mode="nearest")).long()


def mirror_field(disp_vox: torch.Tensor) -> torch.Tensor:
    """The field ``(B, ndim, *spatial)`` of the images mirrored along their last axis: reversed along that axis and its
    last component negated (a copy). If ``warp(m, u) = f`` then ``warp(mirror(m), mirror_field(u)) = mirror(f)``,
    where ``mirror`` reverses the last axis; applied twice it gives ``disp_vox`` back."""
    ndim_of_disp(disp_vox)
    disp = torch.flip(disp_vox, dims=(-1,)).clone()
    disp[:, -1] = -disp[:, -1]
    return disp


def compose(disp_first: torch.Tensor, disp_second: torch.Tensor) -> torch.Tensor:
    """Single field equal to warping by ``disp_first`` and then by ``disp_second``.

    ``warp(warp(m, first), second)(x) = m(x + second(x) + first(x + second(x)))``, so the
    composite is ``second + warp(first, second)`` (border padding). Shapes ``(B, ndim, *spatial)``.
    """
    ndim_of_disp(disp_first, "disp_first")
    ndim_of_disp(disp_second, "disp_second")
    if disp_first.shape[1:] != disp_second.shape[1:]:
        raise ValueError(
            f"disp_first and disp_second shapes differ: {tuple(disp_first.shape)} vs {tuple(disp_second.shape)}"
        )
    return disp_second + warp(disp_first, disp_second)


def integrate_velocity(vel_vox: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring of a stationary velocity field: ``exp(vel)`` as a displacement.

    ``u = vel / 2**steps`` then ``steps`` times ``u = u + warp(u, u)``. ``(B, ndim, *spatial)``, voxels.
    """
    ndim_of_disp(vel_vox, "vel_vox")
    if int(steps) < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    disp = vel_vox / (2 ** int(steps))
    for _ in range(int(steps)):
        disp = disp + warp(disp, disp)
    return disp


def resize_field(disp_vox: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a field onto a grid of ``shape`` covering the same extent, rescaling the vectors.

    With voxel centres at the corners (``align_corners=True``), axis ``i`` scales by
    ``(new_i - 1) / (old_i - 1)``; vectors are multiplied by the same factor.
    """
    ndim = ndim_of_disp(disp_vox)
    shape = tuple(int(n) for n in shape)
    if len(shape) != ndim:
        raise ValueError(f"shape must have {ndim} entries, got {shape}")
    old = disp_vox.shape[2:]
    if tuple(old) == shape:
        return disp_vox
    mode = "trilinear" if ndim == 3 else "bilinear"
    resized = F.interpolate(disp_vox, size=shape, mode=mode, align_corners=True)
    factors = [(shape[a] - 1) / max(int(old[a]) - 1, 1) for a in range(ndim)]
    scale = torch.tensor(factors, dtype=disp_vox.dtype, device=disp_vox.device).view(1, ndim, *([1] * ndim))
    return resized * scale


# --------------------------------------------------------------------------- affine
def centered_affine_matrix(
    linear: torch.Tensor, translation_vox: torch.Tensor, shape: Sequence[int]
) -> torch.Tensor:
    """Homogeneous voxel matrix of ``y = linear @ (x - c) + c + translation_vox`` with ``c`` the grid centre.

    Args:
        linear: ``(B, ndim, ndim)``.
        translation_vox: ``(B, ndim)`` in voxels.
        shape: spatial shape; ``c = (shape - 1) / 2``.

    Returns:
        ``(B, ndim + 1, ndim + 1)``.
    """
    ndim = len(shape)
    if linear.shape[-2:] != (ndim, ndim) or translation_vox.shape[-1] != ndim:
        raise ValueError(
            f"linear must be (B, {ndim}, {ndim}) and translation_vox (B, {ndim}); "
            f"got {tuple(linear.shape)} and {tuple(translation_vox.shape)}"
        )
    centre = torch.tensor([(int(n) - 1) / 2.0 for n in shape], dtype=linear.dtype, device=linear.device)
    offset = centre + translation_vox - torch.einsum("bij,j->bi", linear, centre)
    top = torch.cat([linear, offset[..., None]], dim=-1)
    bottom = torch.zeros(linear.shape[0], 1, ndim + 1, dtype=linear.dtype, device=linear.device)
    bottom[..., -1] = 1.0
    return torch.cat([top, bottom], dim=-2)


def affine_to_disp(matrix_vox: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Displacement ``u(x) = M x - x`` of a homogeneous voxel matrix on a grid of ``shape``.

    Args:
        matrix_vox: ``(B, ndim + 1, ndim + 1)`` or ``(ndim + 1, ndim + 1)``.

    Returns:
        ``(B, ndim, *shape)`` in voxels.
    """
    ndim = len(shape)
    if matrix_vox.dim() == 2:
        matrix_vox = matrix_vox[None]
    if matrix_vox.shape[-2:] != (ndim + 1, ndim + 1):
        raise ValueError(
            f"matrix_vox must be (B, {ndim + 1}, {ndim + 1}) for a {ndim}D grid, got {tuple(matrix_vox.shape)}"
        )
    grid = identity_grid(shape, device=matrix_vox.device, dtype=matrix_vox.dtype).reshape(ndim, -1)
    moved = torch.einsum("bij,jn->bin", matrix_vox[:, :ndim, :ndim], grid) + matrix_vox[:, :ndim, ndim:]
    return (moved - grid[None]).reshape(matrix_vox.shape[0], ndim, *shape)


def identity_matrix(batch: int, ndim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(batch, ndim + 1, ndim + 1)`` identity matrices."""
    return torch.eye(ndim + 1, device=device, dtype=dtype).expand(batch, ndim + 1, ndim + 1).clone()


# --------------------------------------------------------------------------- derivatives
def spatial_gradient(field: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Derivatives of every channel along every axis, like ``numpy.gradient``.

    Central differences inside, one-sided differences on the first and last voxel.

    Args:
        field: ``(B, C, *spatial)`` (each spatial size >= 2).
        spacing: voxel size per axis (same unit as the result's denominator); default 1.

    Returns:
        ``(B, C, ndim, *spatial)``: entry ``[:, c, a]`` is ``d field_c / d x_a``.
    """
    ndim = field.dim() - 2
    if ndim not in (2, 3):
        raise ValueError(f"field must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(field.shape)}")
    spacing = spacing_tuple(spacing, ndim)
    out = field.new_empty((field.shape[0], field.shape[1], ndim) + tuple(field.shape[2:]))
    for axis in range(ndim):
        dim = axis + 2
        n = field.shape[dim]
        if n < 2:
            raise ValueError(f"field needs at least 2 voxels along axis {axis}, got shape {tuple(field.shape)}")
        g = out.select(2, axis)  # (B, C, *spatial), written in place
        g.narrow(dim, 0, 1).copy_(field.narrow(dim, 1, 1) - field.narrow(dim, 0, 1))
        g.narrow(dim, n - 1, 1).copy_(field.narrow(dim, n - 1, 1) - field.narrow(dim, n - 2, 1))
        if n > 2:
            g.narrow(dim, 1, n - 2).copy_((field.narrow(dim, 2, n - 2) - field.narrow(dim, 0, n - 2)) * 0.5)
        if spacing[axis] != 1.0:
            g.div_(spacing[axis])
    return out


def jacobian_matrix(disp_vox: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Jacobian of ``x -> x + u(x)``: ``(B, ndim, ndim, *spatial)``, entry ``[i, j] = d phi_i / d x_j``.

    With ``spacing`` the derivative is taken in physical units,
    ``J_ij = delta_ij + (s_i / s_j) du_i/dx_j`` (voxel field converted to mm, mm grid);
    this is a similarity transform of the voxel Jacobian, so its determinant is unchanged.
    """
    ndim = ndim_of_disp(disp_vox)
    spacing = spacing_tuple(spacing, ndim)
    if any(s != 1.0 for s in spacing):
        disp_vox = disp_vox * torch.tensor(spacing, dtype=disp_vox.dtype, device=disp_vox.device).view(
            1, ndim, *([1] * ndim)
        )
    jac = spatial_gradient(disp_vox, spacing)
    jac.diagonal(dim1=1, dim2=2).add_(1.0)  # + identity
    return jac


def jacobian_determinant(disp_vox: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """``det(I + grad u)`` at every voxel (central differences): ``(B, *spatial)``.

    ``det <= 0`` marks folding. Equal to voxelmorph's ``jacobian_determinant`` for a voxel
    field; ``spacing`` gives the physical-unit Jacobian (same determinant, see
    :func:`jacobian_matrix`).
    """
    jac = jacobian_matrix(disp_vox, spacing)
    ndim = jac.shape[1]
    if ndim == 2:
        return jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
    return (
        jac[:, 0, 0] * (jac[:, 1, 1] * jac[:, 2, 2] - jac[:, 1, 2] * jac[:, 2, 1])
        - jac[:, 0, 1] * (jac[:, 1, 0] * jac[:, 2, 2] - jac[:, 1, 2] * jac[:, 2, 0])
        + jac[:, 0, 2] * (jac[:, 1, 0] * jac[:, 2, 1] - jac[:, 1, 1] * jac[:, 2, 0])
    )
