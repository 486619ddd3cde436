"""holly-jax: HOLLy point-cloud reconstruction from 2D images at unknown poses, in JAX."""
