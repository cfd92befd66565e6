-- End-to-end with a real editor: headless Neovim's built-in LSP client starts
-- `nabla lsp`, opens every example and a broken file, and records what it receives:
-- the diagnostics published per file, a hover and a go-to-definition. tests/nvim.rs runs
-- this and checks the JSON it writes. Works with Neovim 0.7 (Debian 12) and later.
local bin = os.getenv("NABLA_BIN")
local root = os.getenv("NABLA_ROOT")
local broken = os.getenv("NABLA_BROKEN")
local out = os.getenv("NABLA_OUT")

local published = {}
local default = vim.lsp.handlers["textDocument/publishDiagnostics"]
vim.lsp.handlers["textDocument/publishDiagnostics"] = function(err, result, ctx, config)
  published[vim.uri_to_fname(result.uri)] = result.diagnostics
  return default(err, result, ctx, config)
end

local client = vim.lsp.start_client({ name = "nabla", cmd = { bin, "lsp" }, root_dir = root })
local files = vim.fn.glob(root .. "/examples/*.net", false, true)
table.insert(files, broken)
local result = { files = {}, diagnostics = {} }
for _, f in ipairs(files) do
  vim.cmd("edit " .. vim.fn.fnameescape(f))
  vim.lsp.buf_attach_client(0, client)
  table.insert(result.files, f)
end
local ok = vim.wait(20000, function()
  for _, f in ipairs(files) do
    if published[f] == nil then return false end
  end
  return true
end, 20)
result.all_published = ok
for f, ds in pairs(published) do
  local shown = {}
  for _, d in ipairs(ds) do
    table.insert(shown, { code = d.code, line = d.range.start.line, message = d.message })
  end
  result.diagnostics[vim.fn.fnamemodify(f, ":t")] = shown
end

-- Hover and definition on `dense` in the MLP example (line 9: `  dense(512, relu)`).
local mlp = root .. "/examples/mnist_mlp.net"
vim.cmd("edit " .. vim.fn.fnameescape(mlp))
local lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
local row
for i, l in ipairs(lines) do
  if l:match("^%s*dense%(512") then row = i - 1 break end
end
local params = { textDocument = { uri = vim.uri_from_bufnr(0) }, position = { line = row, character = 3 } }
local hover = vim.lsp.buf_request_sync(0, "textDocument/hover", params, 10000)
local def = vim.lsp.buf_request_sync(0, "textDocument/definition", params, 10000)
for _, r in pairs(hover or {}) do
  if r.result then result.hover = r.result.contents.value end
end
for _, r in pairs(def or {}) do
  if r.result then
    local loc = r.result[1] or r.result
    result.definition = { file = vim.uri_to_fname(loc.uri), line = loc.range.start.line }
  end
end

local fh = io.open(out, "w")
fh:write(vim.fn.json_encode(result))
fh:close()
vim.lsp.stop_client(client)
vim.cmd("qa!")
