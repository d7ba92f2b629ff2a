"""Fast offscreen MuJoCo rendering shared by every env in `envs/`.

Data collection renders one frame per env step, so rendering dominates its cost. `FastRenderer`
wraps `mujoco.Renderer` with everything that costs time and adds nothing to a 64 px frame turned
off: shadows, reflections, skybox, fog/haze, textures and multisampling. Env models also draw
their floor as a thin box, not a plane (Mesa's llvmpipe draws a plane as a grid, more slowly).

    r = FastRenderer(model, size=64, camera="top")
    img = r.render(data)      # (size, size, 3) uint8
    r.close()                 # free the GL context explicitly (avoids EGL teardown noise)
"""
from __future__ import annotations

import atexit
import contextlib
import weakref
from typing import Iterator

import mujoco
import numpy as np

# The GL backend (MUJOCO_GL, read by mujoco at its import) is chosen by worldmodel/envs/__init__.py,
# which runs before this module imports mujoco.

_OFF_FLAGS = (
    mujoco.mjtRndFlag.mjRND_SHADOW,
    mujoco.mjtRndFlag.mjRND_REFLECTION,
    mujoco.mjtRndFlag.mjRND_SKYBOX,
    mujoco.mjtRndFlag.mjRND_FOG,
    mujoco.mjtRndFlag.mjRND_HAZE,
)


_LIVE: "weakref.WeakSet[FastRenderer]" = weakref.WeakSet()


def _close_all() -> None:
    """Free GL contexts before interpreter teardown, when EGL can still release them quietly."""
    for r in list(_LIVE):
        r.close()


def _close_renderer(renderer: mujoco.Renderer) -> None:
    """Close a `mujoco.Renderer` without breaking the other renderers of this thread.

    mujoco's EGL `GLContext.free()` ends with `eglReleaseThread()`; on Mesa (this project's CPU
    machines) every renderer still alive in the thread then returns garbage frames (a second env's
    frame no longer matches its own earlier render once the first env has closed).
    So for EGL we free the MuJoCo context and destroy the EGL context ourselves, without
    releasing the thread. Other backends use the stock `close()`.
    """
    gl = getattr(renderer, "_gl_context", None)
    if type(gl).__module__ != "mujoco.egl" or not getattr(gl, "_context", None):
        renderer.close()
        return
    from OpenGL import EGL   # imported by mujoco.egl already
    import mujoco.egl as mj_egl

    gl.make_current()
    if renderer._mjr_context is not None:
        renderer._mjr_context.free()
        renderer._mjr_context = None
    EGL.eglMakeCurrent(mj_egl.EGL_DISPLAY, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE,
                       EGL.EGL_NO_CONTEXT)
    EGL.eglDestroyContext(mj_egl.EGL_DISPLAY, gl._context)
    gl._context = None
    renderer._gl_context = None


def prepare_model(model: mujoco.MjModel, size: int, multisample: int = 0) -> None:
    """Set model visual options for cheap offscreen frames; call BEFORE creating a renderer.

    The offscreen buffer must be at least `size` wide; multisampling (`offsamples`) smooths edges
    at a cost, off by default.
    """
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), size)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), size)
    model.vis.quality.offsamples = multisample
    model.vis.quality.shadowsize = 0
    model.vis.headlight.active = 1
    model.mat_texid[:] = -1            # plain coloured materials: no texture sampling


class FastRenderer:
    """A `mujoco.Renderer` with expensive effects off, rendering one camera at a fixed size.

    `camera` is a model camera name or id, -1 for MuJoCo's default free camera, or a prepared
    `mujoco.MjvCamera` (e.g. a tracking camera for a gymnasium env).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        size: int,
        camera: str | int | mujoco.MjvCamera = -1,
        multisample: int = 0,
    ):
        prepare_model(model, size, multisample)
        self.size = size
        self.camera = camera
        self._renderer: mujoco.Renderer | None = mujoco.Renderer(model, height=size, width=size)
        # atexit runs hooks last-registered-first. Re-registering on every new renderer keeps ours
        # after any EGL teardown hook registered since (mujoco.egl's, or dm_control's when an env
        # imports it lazily), so contexts are freed while the EGL display is still alive.
        atexit.unregister(_close_all)
        atexit.register(_close_all)
        flags = self._renderer.scene.flags
        for f in _OFF_FLAGS:
            flags[f] = False
        self._option = mujoco.MjvOption()
        _LIVE.add(self)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """(size, size, 3) uint8 frame of `data` seen from the camera."""
        if self._renderer is None:
            raise RuntimeError("FastRenderer.render called after close(); create a new env")
        self._renderer.update_scene(data, camera=self.camera, scene_option=self._option)
        return self._renderer.render()

    @contextlib.contextmanager
    def current(self) -> Iterator[mujoco.MjrContext]:
        """This renderer's GL context made current, and its MjrContext: for uploading model data
        changed since the renderer was made (`mujoco.mjr_uploadHField` after a heightfield edit)."""
        if self._renderer is None:
            raise RuntimeError("FastRenderer.current called after close(); create a new env")
        gl = self._renderer._gl_context
        if gl is not None:
            gl.make_current()
        yield self._renderer._mjr_context

    def close(self) -> None:
        """Free the GL context now instead of at interpreter teardown."""
        if self._renderer is not None:
            _close_renderer(self._renderer)
            self._renderer = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter teardown: GL may already be gone
            pass
