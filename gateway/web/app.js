import { get } from "./api.js"; document.title = "Jan Models";
