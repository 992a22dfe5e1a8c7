"""ComfyUI-Face2Diffusion: ComfyUI entry point.

Nothing from ComfyUI is imported at module level, so the `f2d` library and its tests run
without the host; the host calls `comfy_entrypoint` (V3 node schema) when it loads the pack.
"""
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import Face2DiffusionExtension

    return Face2DiffusionExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
