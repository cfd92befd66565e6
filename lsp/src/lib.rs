//! `nabla-lsp`: the language server. Not built yet: see the open issues.
