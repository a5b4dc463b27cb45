console.log("execbox smoke ok");
console.log(process.versions.node);
