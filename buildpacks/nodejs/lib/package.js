// What bin/compile needs to know about the app, in one start of node (each start costs a
// visible part of a push that installs nothing): node's version, package.json's engines.node
// and whether this node satisfies it, and whether a build script is defined. One per line.
"use strict";
const { satisfies } = require("./engines.js");
const pkg = require(process.argv[2]);
const engines = (pkg.engines && pkg.engines.node) || "";
console.log(process.version);
console.log(engines.replace(/\n/g, " "));
console.log(engines ? satisfies(engines, process.version) : "yes");
console.log(pkg.scripts && pkg.scripts.build ? "yes" : "no");
