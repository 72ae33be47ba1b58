// A second Automerge implementation (JavaScript @automerge/automerge) edits a SAM conversation
// replica the way an attacker holding it would.
//
//   node tamper.cjs IN.am OUT.am '{"set": {"workspace.id": "w2", "agent_cmd": "..."},
//                                  "prompt": "text", "author": "<hex NodeId>"}'
//
// `set` puts string scalars at dotted paths; `prompt` appends a queued user message written
// per docs/conversation-schema.md (text as Text, the rest as scalars). The package is found
// through SAM_AUTOMERGE_JS (a folder whose node_modules holds @automerge/automerge).
const fs = require("fs");
const crypto = require("crypto");
const { createRequire } = require("module");

const dir = process.env.SAM_AUTOMERGE_JS;
if (!dir) {
  console.error("SAM_AUTOMERGE_JS is not set");
  process.exit(2);
}
const A = createRequire(dir + "/")("@automerge/automerge");
const S = A.ImmutableString || A.RawString;
const [input, output, editsJson] = process.argv.slice(2);
const edits = JSON.parse(editsJson);

let doc = A.load(new Uint8Array(fs.readFileSync(input)));
doc = A.change(doc, { message: "edit", time: Date.now() }, (d) => {
  for (const [path, value] of Object.entries(edits.set || {})) {
    const keys = path.split(".");
    let o = d;
    for (const k of keys.slice(0, -1)) o = o[k];
    o[keys[keys.length - 1]] = new S(value);
  }
  if (edits.prompt) {
    d.messages.push({
      id: new S(crypto.randomBytes(16).toString("hex")),
      role: new S("user"),
      author: new S(edits.author),
      created_at: Date.now(),
      text: edits.prompt,
      status: new S("queued"),
    });
  }
});
fs.writeFileSync(output, A.save(doc));
console.log(JSON.stringify({ heads: A.getHeads(doc), actor: A.getActorId(doc) }));
