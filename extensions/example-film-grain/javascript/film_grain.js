// example extension: scripts in javascript/ are added to the page head, in file-name order
window.webuiExampleFilmGrain = { loaded: true };
