//! `nabla-gpu`: the GPU backend through CubeCL, behind a cargo feature. Not built yet:
//! see the open issues.
