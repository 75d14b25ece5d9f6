"""DKP's kernel samplers in fkp_jax.kernels against golden_dkp/rks.npz, and the samplers' invariants.

Golden: the original DIP-DKP random kernel sampler (RKS), Gaussian x2/x3/x4/x8 and linear motion x2/x3/x4,
with every uniform it consumed; rebuilt here from those recorded draws. Invariants: every random sampler
(DKP Gaussian prior, DKP linear motion, our camera-shake trajectories) over many keys.
"""

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from fkp_jax import kernels as K

# Tolerances (docs/tolerances.md rule). The original computes every kernel in float64 NumPy/OpenCV and casts
# the result to float32, so its own float32-vs-float64 spread is only that cast (<= 3.7e-8 of the peak,
# `gauss_kernels_f32` vs `gauss_kernels`). Relative to each kernel's peak, this port in float32 measured on
# AVX2 (native), AVX and SSE4.2 (XLA_FLAGS=--xla_cpu_max_isa, FKP_TOLERANCE_LOG): Gaussian <= 7.4e-7 (0.37 of
# the tolerance), linear motion <= 7.2e-8 (its warp integers exact on all three); the F32_TOL of
# tests/test_kernels.py (FKP Gaussians, the same spline code: <= 9.2e-7 on AVX-512) is kept.
F32_TOL = 2e-6
F64_TOL = 1e-12  # float64: measured <= 1.5e-15 of the peak (Gaussian), 2.8e-17 absolute (motion), every ISA above
SCALES = (2, 3, 4)
N_KEYS = 128  # keys per sampler and scale in the invariant tests


@pytest.fixture(scope="module")
def rks(ref):
    path = ref / "golden_dkp" / "rks.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return dict(np.load(path, allow_pickle=False))


def _rel(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


# ----------------------------------------------------------------------------------------- golden rebuilds

@pytest.mark.parametrize("sf", (2, 3, 4, 8))
def test_dkp_ranges_and_centres(rks, sf):
    p = f"x{sf}_"
    assert K.kernel_size(sf) == rks[p + "k"]
    assert K.dkp_variance_range(sf) == (rks[p + "min_var"], rks[p + "max_var"])  # the original's float64 values
    assert K.dkp_prior_centre(sf) == rks[p + "move_xy"][0] == rks[p + "move_xy"][1]
    assert (K.kernel_size(sf) - sf) / 2 == rks[p + "gt_centre"]  # differs from the prior centre at x8 only
    assert (K.dkp_prior_centre(sf) == rks[p + "gt_centre"]) == (sf != 8)


def _gaussian_kernels(sf, params):
    return jax.jit(jax.vmap(lambda a: K.dkp_gaussian_kernel(sf, a[0], a[1], a[2])))(jnp.asarray(params))


@pytest.mark.parametrize("sf", (2, 3, 4, 8))
def test_dkp_gaussian_rebuilt_from_recorded_draws(rks, sf):
    """Recorded uniforms -> (lambda1, lambda2, theta) -> kernel; plus the 6 fixed rows (extreme parameters).
    float32 at the scales DIP-DKP uses; float64 everywhere, with the intermediates."""
    p = f"x{sf}_"
    n = len(rks[p + "gauss_u"])
    params = np.concatenate([rks[p + "gauss_params"], rks[p + "fixed_params"]])
    want = np.concatenate([rks[p + "gauss_kernels"], rks[p + "fixed_kernels"]])
    np.testing.assert_allclose(K.dkp_gaussian_params(sf, rks[p + "gauss_u"]), rks[p + "gauss_params"], rtol=1e-6)
    if sf != 8:
        out = _gaussian_kernels(sf, params)
        assert out.dtype == jnp.float32 and out.shape == want.shape
        for row in range(len(want)):
            np.testing.assert_allclose(out[row], want[row], rtol=0, atol=F32_TOL * np.abs(want[row]).max(),
                                       err_msg=f"row {row}")
    with jax.enable_x64(True):
        np.testing.assert_allclose(K.dkp_gaussian_params(sf, rks[p + "gauss_u"]), rks[p + "gauss_params"],
                                   rtol=1e-15, atol=0)  # 1 ulp: XLA may fuse min + u (max - min) into an FMA
        out = _gaussian_kernels(sf, params)
        assert out.dtype == jnp.float64
        assert _rel(out, want) < F64_TOL
        com = np.array([ndimage.center_of_mass(np.asarray(kern)) for kern in out[:n]])
        np.testing.assert_allclose(com, rks[p + "gauss_com_final"], rtol=0, atol=1e-12)


def test_kernel_move(rks):
    """The original's kernel_move (golden intermediate `gauss_moved`, x4), a (row, col) target, kernel_shift."""
    raw = rks["x4_gauss_raw"]
    with jax.enable_x64(True):
        move = jax.jit(jax.vmap(K.kernel_move))
        moved = move(raw, np.full((len(raw), 2), K.dkp_prior_centre(4)))
        assert _rel(moved, rks["x4_gauss_moved"]) < F64_TOL  # not renormalised
        # a (row, col) target: scipy.ndimage.shift by (target - centre of mass)
        target = np.array([[5.0, 7.25]] * len(raw))
        want = ndimage.shift(raw[1], target[1] - ndimage.center_of_mass(raw[1]), order=3, mode="constant", cval=0.0)
        np.testing.assert_allclose(move(raw, target)[1], want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(K.kernel_move(raw[2], (19 - 4) / 2), K.kernel_shift(raw[2], 4), rtol=0, atol=1e-7)


def _motion_rebuild(sf, theta_deg):
    """One compiled program: angle -> OpenCV rotation matrix, warped segment (unnormalised), kernel."""
    centre = (3 * sf + 3) / 2

    def one(t):
        affine = K._rotation_matrix(centre, centre, t)
        segment = jnp.asarray(K.linear_motion_segment(sf), affine.dtype)
        return affine, K._warp_affine_bilinear(segment, affine), K.linear_motion_kernel(sf, t)
    return jax.jit(jax.vmap(one))(jnp.asarray(theta_deg))


@pytest.mark.parametrize("sf", SCALES)
def test_linear_motion_rebuilt_from_recorded_draws(rks, sf):
    """OpenCV's rotation matrix and fixed-point bilinear warp, reproduced; the angle is 360 u."""
    p = f"x{sf}_"
    np.testing.assert_array_equal(K.linear_motion_segment(sf), rks[p + "motion_line"])
    np.testing.assert_array_equal(360 * rks[p + "motion_u"], rks[p + "motion_theta_deg"])
    want = rks[p + "motion_kernels"]
    # float32: the warp rounds source positions to 1/1024 px (half to even), then to 1/32 px. Over these 50
    # samples the smallest distance of an output-changing rounding from its boundary is 0.011 (in 1/1024 px),
    # the float32 error of those positions <= 0.0062, so float32 reproduces OpenCV's integers here; an
    # angle within ~1e-7 relative of a boundary could move one sample by 1/32 px (not in this set).
    _, rotated, out = _motion_rebuild(sf, rks[p + "motion_theta_deg"])
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(rotated, rks[p + "motion_rotated"])  # sums of multiples of 1/1024: exact
    for row in range(len(want)):
        np.testing.assert_allclose(out[row], want[row], rtol=0, atol=F32_TOL * want[row].max(), err_msg=f"row {row}")
    with jax.enable_x64(True):
        affine, rotated, out = _motion_rebuild(sf, rks[p + "motion_theta_deg"])
        np.testing.assert_allclose(affine, rks[p + "motion_affine"], rtol=0, atol=1e-14)  # last bit: FMA under jit
        np.testing.assert_array_equal(rotated, rks[p + "motion_rotated"])  # OpenCV bit for bit
        np.testing.assert_allclose(out, want, rtol=0, atol=F64_TOL * want.max())


def test_warp_matches_opencv_at_any_angle():
    """float64 warp == cv2.warpAffine on 40 more angles (axis-aligned ones included), a non-square image
    with arbitrary values. The source positions (integers) must agree exactly; the weighted sums of
    arbitrary values may differ in the last bit (XLA fuses the products and sums), hence 1e-15."""
    rng = np.random.RandomState(4)
    angles = np.concatenate([[0.0, 45.0, 90.0, 180.0, 270.0, 359.999], 360 * rng.rand(34)])
    image = rng.rand(13, 17) * (rng.rand(13, 17) < 0.5)
    centre = (7.25, 5.5)  # (x, y)
    with jax.enable_x64(True):
        warp = jax.jit(jax.vmap(lambda t: K._warp_affine_bilinear(jnp.asarray(image), K._rotation_matrix(*centre, t))))
        got = np.asarray(warp(jnp.asarray(angles)))
    for angle, out in zip(angles, got):
        want = cv2.warpAffine(image, cv2.getRotationMatrix2D(centre, float(angle), 1.0), (17, 13))
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-15, err_msg=f"angle {angle}")


# ----------------------------------------------------------------------------------------- samplers

SAMPLERS = {
    "dkp_gaussian": K.random_dkp_gaussian_kernel,
    "linear_motion": K.random_linear_motion_kernel,
    "trajectory": K.random_motion_kernel,
}


@functools.lru_cache(maxsize=None)
def _batched(name, sf):
    """One compiled jit(vmap(sampler)) per (sampler, scale), shared by the tests below."""
    return jax.jit(jax.vmap(functools.partial(SAMPLERS[name], sf=sf)))


def _keys(seed, n=N_KEYS):
    return jax.random.split(jax.random.key(seed), n)


def _expected_centre(name, sf):
    """Where the sampler puts the centre of mass, and how far from it a kernel may land (measured on 512 keys)."""
    k = K.kernel_size(sf)
    if name == "dkp_gaussian":  # spline move computed from the truncated raw kernel: 0.12 .. 0.19 px off
        return K.dkp_prior_centre(sf), 0.25
    if name == "linear_motion":  # segment centre (M, M) rotated about (3s+3)/2: 0.59 .. 0.84 px off (x3: <= 0.025)
        return (3 * sf + 3) / 2, (0.05 if sf == 3 else 0.9)
    return (k - sf) / 2, 1e-5  # trajectory: centred by construction; measured <= 2.4e-6


@pytest.mark.parametrize("name,sf", [(name, sf) for name in SAMPLERS for sf in SCALES
                                     if not (name == "trajectory" and sf == 3)])  # trajectories: only k changes
def test_sampler_invariants(name, sf):
    kerns = np.asarray(_batched(name, sf)(_keys(sf)))
    k = K.kernel_size(sf)
    assert kerns.shape == (N_KEYS, k, k) and kerns.dtype == np.float32 and np.isfinite(kerns).all()
    np.testing.assert_allclose(kerns.sum(axis=(1, 2)), 1.0, rtol=0, atol=1e-5)  # measured <= 2.4e-7
    assert kerns.min() >= 0  # measured exactly 0 for all three (the spline move leaves no negative values here)
    if name == "dkp_gaussian":
        # the spline move (about 1 - s px) maps the last s - 1 rows / columns from outside the grid: exactly 0
        assert not kerns[:, k - sf + 1:, :].any() and not kerns[:, :, k - sf + 1:].any()
    else:  # motion kernels stay off the outer ring of pixels
        assert not kerns[:, [0, -1], :].any() and not kerns[:, :, [0, -1]].any()
    centre, tol = _expected_centre(name, sf)
    com = np.asarray(jax.vmap(K.center_of_mass)(kerns))
    assert np.abs(com - centre).max() <= tol, np.abs(com - centre).max()
    # distinct keys give distinct kernels; a real spread of orientations (and of widths / lengths)
    flat = kerns.reshape(N_KEYS, -1)
    assert min(np.abs(flat[i] - flat[i + 1:]).max() for i in range(N_KEYS - 1)) > 1e-4
    grid = np.arange(k) - com[:, :, None]  # (n, 2, k)
    var_rows = np.einsum("nij,ni->n", kerns, grid[:, 0] ** 2)
    var_cols = np.einsum("nij,nj->n", kerns, grid[:, 1] ** 2)
    assert (var_rows > 1.5 * var_cols).sum() > N_KEYS // 20 and (var_cols > 1.5 * var_rows).sum() > N_KEYS // 20
    peaks = kerns.max(axis=(1, 2))
    assert peaks.max() / peaks.min() > (1.1 if name == "linear_motion" else 1.5)


def test_dkp_gaussian_sampler_draws_the_prior_ranges():
    """The sampled kernels lie between the prior's sharpest and widest members (lambdas in [min_var, max_var))."""
    kerns = np.asarray(_batched("dkp_gaussian", 2)(_keys(2)))
    vmin, vmax = K.dkp_variance_range(2)
    sharpest = K.dkp_gaussian_kernel(2, vmin, vmin, 0.0)
    widest = K.dkp_gaussian_kernel(2, vmax, vmax, 0.0)
    peaks = kerns.max(axis=(1, 2))
    assert float(widest.max()) - 1e-6 <= peaks.min() and peaks.max() <= float(sharpest.max()) + 1e-6


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_jit_vmap_and_seeds(name):
    keys = _keys(2)
    batched = _batched(name, 2)(keys)
    single = SAMPLERS[name](keys[5], 2)  # one key (jitted, no vmap)
    np.testing.assert_allclose(batched[5], single, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(SAMPLERS[name](keys[5], 2), single)  # same key, same kernel
    np.testing.assert_array_equal(_batched(name, 2)(keys), batched)
    other = _batched(name, 2)(_keys(3))  # another seed
    assert float(jnp.abs(other - batched).max(axis=(1, 2)).min()) > 1e-4


# ----------------------------------------------------------------------------------------- trajectories

def test_motion_trajectory_is_a_unit_length_path():
    path = K.motion_trajectory(jax.random.key(0))
    assert path.shape == (K.TRAJECTORY_STEPS, 2)
    np.testing.assert_array_equal(path[0], 0.0)  # starts at the origin
    steps = jnp.linalg.norm(jnp.diff(path, axis=0), axis=-1)
    np.testing.assert_allclose(steps, 1 / (K.TRAJECTORY_STEPS - 1), rtol=1e-4)  # constant speed, length 1


def test_rasterize_trajectory_keeps_the_centre_of_mass():
    raster = jax.jit(lambda pts, w, c: K.rasterize_trajectory(pts, 15, c, weights=w))  # one compile: (50, 2) paths
    ones = jnp.ones(50)
    # one point (50 times): plain bilinear splatting
    one = np.asarray(raster(jnp.zeros((50, 2)), ones, jnp.asarray([4.25, 5.5])))
    want = np.zeros((15, 15))
    want[4, 5], want[4, 6], want[5, 5], want[5, 6] = 0.375, 0.375, 0.125, 0.125
    np.testing.assert_allclose(one, want, rtol=0, atol=1e-7)
    # a straight horizontal path of length 6: a horizontal line on rows 6 and 7, centred on its mean
    line = np.asarray(raster(jnp.stack([jnp.zeros(50), jnp.linspace(0, 6, 50)], 1), ones, jnp.asarray([6.5, 7.0])))
    assert not np.delete(line, [6, 7], axis=0).any() and abs(line[6].sum() - 0.5) < 1e-6
    np.testing.assert_allclose(line[6, 4:11].sum(), 0.5, atol=1e-6)
    # weighted, far too long, off-centre path: shrunk to fit inside the 1 px margin, centre of mass exact
    rng = np.random.RandomState(0)
    kern = np.asarray(raster(40 * rng.randn(50, 2) + 100, rng.rand(50), jnp.asarray([6.0, 7.5])))
    assert abs(kern.sum() - 1) < 1e-6 and kern.min() >= 0
    assert not kern[[0, -1], :].any() and not kern[:, [0, -1]].any()
    assert kern[1].any() or kern[-2].any() or kern[:, 1].any() or kern[:, -2].any()  # it reaches the margin
    np.testing.assert_allclose(K.center_of_mass(kern), [6.0, 7.5], rtol=0, atol=1e-5)


def test_trajectory_kernel_on_a_larger_grid():
    """KernelGAN-FKP x4 data: 21 x 21 grid, centre of mass at (21 - 4)/2 = 8.5."""
    kern = K.random_motion_kernel(jax.random.key(7), 4, size=21)
    assert kern.shape == (21, 21) and abs(float(kern.sum()) - 1) < 1e-6
    np.testing.assert_allclose(K.center_of_mass(kern), [8.5, 8.5], atol=1e-5)
    lo, hi = K.motion_length_range(4, 21)
    assert (lo, hi) == pytest.approx((0.4 * 17, 17.0)) and K.motion_length_range(2) == pytest.approx((3.6, 9.0))
